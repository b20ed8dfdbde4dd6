"""How many positions a conversation takes in front of the policy, for the upload's token limit.

The web process never imports torch, and transformers' tokenizers pull it in, so this reads the
policy folder's `tokenizer.json` with the `tokenizers` library and renders its chat template
(`chat_template.jinja` or tokenizer_config.json's `chat_template`, else app.chat.FALLBACK_TEMPLATE)
with Jinja set up as transformers sets it up. The count is that of trainer/render.py's
`prompt_ids`, which the worker feeds the model: tests/prompts/test_tokens.py holds the two equal.
A written demonstration is counted the same way, as the whole conversation with the reply last
(`dialogue_counter`, no generation prompt).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.chat import FALLBACK_TEMPLATE, Conversation, normalise
from app.config import Settings
from app.prompts.parsing import TokenCounter, approx_tokens
from app.runs.models import ModelVersion


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


@lru_cache(maxsize=8)
def _counter(folder: str, _mtime: float, generation_prompt: bool = True) -> TokenCounter:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    path = Path(folder)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    jinja_file = path / "chat_template.jinja"
    source = (
        jinja_file.read_text() if jinja_file.exists() else config.get("chat_template") or FALLBACK_TEMPLATE
    )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    template = env.from_string(source)
    specials = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}

    def count(conv: Conversation) -> int:
        text = template.render(messages=normalise(conv), add_generation_prompt=generation_prompt, **specials)
        return len(tok.encode(text, add_special_tokens=False).ids)

    return count


def conversation_counter(folder: Path, *, generation_prompt: bool = True) -> TokenCounter | None:
    """A counter for the policy in `folder`, or None when it has no tokenizer.json. Without the
    generation prompt: for a conversation that ends with the assistant's reply."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    return _counter(str(folder), file.stat().st_mtime, generation_prompt)


# --- the limit an upload checks -------------------------------------------------------------


def token_counter(version: ModelVersion | None) -> tuple[TokenCounter, str]:
    """The policy's own tokenizer and chat template when its folder has them, else an estimate."""
    return counter_at(version.path if version is not None else None)


def counter_at(path: str | None, *, generation_prompt: bool = True) -> tuple[TokenCounter, str]:
    """token_counter for a policy folder (None: no folder); see conversation_counter."""
    if path:
        try:
            counter = conversation_counter(Path(path), generation_prompt=generation_prompt)
        except Exception:  # noqa: BLE001  (an unreadable tokenizer falls back, and says so)
            counter = None
        if counter is not None:
            return counter, "policy tokenizer and chat template"
    return approx_tokens, "approximate (words, or characters / 4, and 4 a turn)"


def context_positions(version: ModelVersion | None) -> int | None:
    """How many tokens the policy sees at once, from its folder's config.json (None: unknown)."""
    return positions_at(version.path if version is not None else None)


def positions_at(path: str | None) -> int | None:
    """context_positions for a policy folder."""
    if not path:
        return None
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    return positions if isinstance(positions, int) and positions > 0 else None


def token_limit(
    *, settings: Settings, version: ModelVersion | None, sampling: dict[str, Any]
) -> tuple[int, str]:
    """The most tokens a prompt may take after the chat template, and the limit's name.

    A prompt must leave the policy room to write; past its context the sampling job would fail.
    """
    max_tokens, limit_name = settings.max_prompt_tokens, "RANKLAB_MAX_PROMPT_TOKENS"
    positions, new_tokens = context_positions(version), sampling.get("max_new_tokens")
    if (
        positions is not None
        and isinstance(new_tokens, int)
        and 0 < new_tokens < positions
        and positions - new_tokens < max_tokens
    ):
        max_tokens = positions - new_tokens
        limit_name = f"the policy's {positions} positions less max_new_tokens {new_tokens}"
    return max_tokens, limit_name
