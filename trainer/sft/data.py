"""Demonstrations as SFT reads them: a prompt conversation and the assistant's ideal reply.

The row shape is TRL's SFTTrainer's and `ranklab export sft`'s: `{"messages": [..., {"role":
"assistant", "content": reply}]}`, optionally with the export's `split`. Torch-free.

The `train_sft` job's data is the `sft` export itself (`load_demos`): the same query, filters,
split and bytes as `ranklab export sft` (app/exports/sft.py), so with the same filters its
manifest's sha256 is that of `ranklab export sft --out FILE`, as for the reward model's groups.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.chat import ChatError, Conversation, as_text, parse_conversation
from app.exports import service as exports
from app.ranking import SPLITS, split_of

FORMAT = "sft"
FILE_TYPE = "jsonl"  # the sha256 in the manifest is that of this file type


@dataclass(frozen=True)
class Demo:
    """One demonstration: `messages` ends with the user turn the `reply` answers."""

    messages: Conversation
    reply: str
    split: str = ""  # train/validation/test as the export gives it; "" = app.ranking.split_of(prompt)

    @property
    def prompt(self) -> str:
        """The conversation as readable text (app.chat.as_text): the split's key, as for rankings."""
        return as_text(self.messages)


def demo_from_row(row: Any) -> Demo:
    """A `{"messages": [..., {"role": "assistant", "content": reply}], "split"?}` row. Raises
    ChatError (a ValueError) naming the field that is wrong."""
    if not isinstance(row, dict) or "messages" not in row:
        raise ChatError("messages", 'is missing: a row is {"messages": [..., {"role": "assistant", ...}]}')
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise ChatError("messages", "needs at least a user turn and the assistant's reply after it")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ChatError(f"messages[{len(messages) - 1}].role", "the last message is the assistant's reply")
    reply = last.get("content")
    if not isinstance(reply, str) or not reply.strip():
        raise ChatError(f"messages[{len(messages) - 1}].content", "the reply is empty")
    split = row.get("split") or ""
    if split not in ("", *SPLITS):
        raise ChatError("split", f"one of {', '.join(SPLITS)}, not {split!r}")
    return Demo(messages=parse_conversation(messages[:-1]), reply=reply.strip(), split=split)


def read_demos(path: Path) -> list[Demo]:
    """A JSON Lines file (optionally .gz) of demonstration rows; the first bad line stops it."""
    out = []
    opener: Any = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(demo_from_row(json.loads(line)))
                except ValueError as exc:  # JSONDecodeError and ChatError are ValueErrors
                    raise ValueError(f"{path}, line {line_no}: {exc}") from exc
    return out


def split_demos(demos: Sequence[Demo]) -> dict[str, list[Demo]]:
    """Demonstrations by split: each one's own (as the export wrote it), else split_of of its
    prompt with the export's default seed and fractions, so a prompt is on one side only."""
    out: dict[str, list[Demo]] = {name: [] for name in SPLITS}
    for d in demos:
        out[d.split or split_of(d.prompt)].append(d)
    return out


def load_demos(
    *, sessions: Callable[[], Session], params: Mapping[str, Any], secret: str
) -> tuple[list[Demo], dict[str, Any]]:
    """The demonstrations the export filters in `params` select
    (app.exports.filters.filters_from_params: sets, labelers, since, until, split_seed,
    split_fractions), each with its split, and the export's manifest of them. `secret` must be
    the export's for the sha256 to agree."""
    rows, manifest = exports.training_rows(sessions=sessions, params=params, fmt=FORMAT, secret=secret)
    return [demo_from_row(row) for row in rows], manifest
