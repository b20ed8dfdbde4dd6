"""The reward model's training data is the `groups` export: the same query, filters, split and
bytes as `ranklab export groups` (app.exports.service), read back row by row into Groups.

So a run's data manifest is the export's manifest (filters, counts, schema version, sha256) and,
with the same filters, its sha256 is that of `ranklab export groups --out FILE`; its validation
prompts are those of `ranklab export groups --split validation`. No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from app.chat import Conversation, from_text, parse_conversation
from app.exports import service as exports
from trainer.reward.model import Group

FORMAT = "groups"
FILE_TYPE = "jsonl"  # the sha256 in the manifest is that of this file type


def load_groups(
    *, sessions: Callable[[], Session], params: Mapping[str, Any], secret: str
) -> tuple[list[Group], dict[str, Any]]:
    """The groups the export filters in `params` select (see
    app.exports.filters.filters_from_params), in task order, and the export's manifest of them.
    `secret` names labelers as the export does (it is hashed into the rows, so it must be the
    export's for the sha256 to agree)."""
    rows, manifest = exports.training_rows(sessions=sessions, params=params, fmt=FORMAT, secret=secret)
    groups = [g for g in map(group_from_row, rows) if g.k >= 2 and g.rankings]
    return groups, manifest


def group_from_row(row: dict[str, Any]) -> Group:
    """A `groups` export row (ranklab's own; also from a file): {"messages" | "prompt", "split",
    "completions": [text | {"text", "policy"}], "rankings": [[rank, ...] | {"ranks": [...]}]},
    or one labeler's "ranks". The prompt is the row's `messages` (a conversation) when it has
    them, else its `prompt` text as one user message. The one adapter from export rows to
    trainer Groups; a broken conversation raises app.chat.ChatError naming the field."""
    comps = row["completions"]
    texts = tuple(c["text"] if isinstance(c, dict) else str(c) for c in comps)
    if "rankings" in row:
        rankings = row["rankings"]
    elif "ranks" in row:
        rankings = [row["ranks"]]
    else:
        raise KeyError("'rankings' (a list of rank lists) is missing")
    raw = [x["ranks"] if isinstance(x, dict) else x for x in rankings]
    # A labeler who left a completion unranked gives no usable ranking of this task.
    ranks = tuple(tuple(int(r) for r in one) for one in raw if None not in one)
    for r in ranks:
        if len(r) != len(texts):
            raise ValueError(f"a ranking has {len(r)} ranks for {len(texts)} completions")
    return Group(
        messages=conversation_of(row),
        completions=texts,
        rankings=ranks,
        split=str(row.get("split") or ""),
        policies=tuple(c.get("policy") if isinstance(c, dict) else None for c in comps),
        task_id=row.get("task_id"),
    )


def conversation_of(row: dict[str, Any]) -> Conversation:
    """A row's prompt as a conversation: `messages` when present, else `prompt` as one user turn."""
    if row.get("messages") is not None:
        return parse_conversation(row["messages"], field="messages")
    if "prompt" not in row:
        raise KeyError("'messages' (a list of {role, content}) or 'prompt' (text) is missing")
    return from_text(row["prompt"])
