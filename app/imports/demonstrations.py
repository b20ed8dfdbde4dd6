"""`demonstrations import`: external SFT data in, as a demonstration set with written replies.

Reads TRL/OpenAI `messages` rows (the last turn is the assistant's reply), `{"prompt",
"completion"}` rows (each text or a list of messages) and Anthropic HH-RLHF dialogues (the
`chosen` side: the prompt is every turn before the last Assistant turn, the reply that turn), as
JSON Lines (optionally gzipped) or Parquet, read and checked as `preferences import` does: one
bad row refuses the whole file, each bad row named with its line and field; with `skip_invalid`
the good rows go in and the bad ones are listed.

Each row becomes a prompt, a closed task whose labels are complete, and a submitted annotation
with its Demonstration (not yet reviewed) by the system user "imported-NAME", so the rows are
`ranklab export sft`'s and the SFT job's like any demonstration written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.chat import ChatError, Conversation, as_text, conversation_hash, parse_conversation, split_hh_reply
from app.db import utcnow
from app.imports.parsing import (
    RowError,
    _prompt,
    _reply,
    detect_by_keys,
    parse_with,
)
from app.imports.upload import Upload, accept
from app.imports.writing import _bulk, system_user, write_prompts
from app.labeling.models import Annotation, Assignment, Demonstration, ReviewStatus, Task
from app.prompts.models import PromptSet, SetKind, SetStatus

KINDS = ("auto", "messages", "prompt-completion", "hh")


@dataclass(frozen=True)
class Row:
    line: int
    messages: Conversation  # the prompt, ending with the user turn the reply answers
    reply: str


@dataclass
class DemoImportResult:
    prompt_set: PromptSet
    kind: str
    rows: int
    imported: int
    skipped: list[RowError]


def detect_kind(rows: list[tuple[int, Any]]) -> str:
    return detect_by_keys(
        rows,
        {"messages": "messages", "completion": "prompt-completion", "chosen": "hh"},
        'TRL/OpenAI {"messages": [...]}, {"prompt", "completion"} or an HH-RLHF dialogue (chosen)',
    )


def _checked_reply(reply: str | None, line: int, field: str, errors: list[RowError]) -> str | None:
    if reply is None:
        return None
    if not reply.strip():
        errors.append(RowError(line, field, "the reply is empty"))
        return None
    return reply.strip()


def parse_messages(line: int, obj: dict[str, Any], errors: list[RowError]) -> Row | None:
    messages = obj.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        errors.append(RowError(line, "messages", "a list of at least a user turn and the assistant's reply"))
        return None
    at = f"messages[{len(messages) - 1}]"
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        errors.append(RowError(line, f"{at}.role", "the last message must be the assistant's reply"))
        return None
    content = last.get("content")
    if not isinstance(content, str):
        errors.append(RowError(line, f"{at}.content", "must be text"))
        return None
    try:
        prompt = parse_conversation(messages[:-1], field="messages")
    except ChatError as e:
        errors.append(RowError(line, e.field, e.message))
        return None
    reply = _checked_reply(content, line, f"{at}.content", errors)
    return Row(line, prompt, reply) if reply is not None else None


def parse_prompt_completion(line: int, obj: dict[str, Any], errors: list[RowError]) -> Row | None:
    n = len(errors)
    prompt = _prompt(obj, line, errors)
    reply = _reply(obj.get("completion"), line, "completion", errors)
    if prompt is None or reply is None or len(errors) > n:
        return None
    reply = _checked_reply(reply, line, "completion", errors)
    return Row(line, prompt, reply) if reply is not None else None


def parse_hh(line: int, obj: dict[str, Any], errors: list[RowError]) -> Row | None:
    chosen = obj.get("chosen")
    if not isinstance(chosen, str):
        errors.append(RowError(line, "chosen", "missing" if chosen is None else "must be a string"))
        return None
    try:
        prompt, reply = split_hh_reply(chosen, field="chosen")
    except ChatError as e:
        errors.append(RowError(line, e.field, e.message))
        return None
    checked = _checked_reply(reply, line, "chosen", errors)
    return Row(line, prompt, checked) if checked is not None else None


PARSERS = {"messages": parse_messages, "prompt-completion": parse_prompt_completion, "hh": parse_hh}


def parse(data: bytes, filename: str, *, kind: str = "auto") -> tuple[str, list[Row], list[RowError], int]:
    """Every row checked: (kind, good rows, errors, rows read)."""
    return parse_with(data, filename, kind=kind, detect=detect_kind, parsers=PARSERS)


def import_demonstrations(session: Session, upload: Upload) -> DemoImportResult:
    """Validate everything, then write it all (or nothing: the caller's transaction)."""
    got = accept(session, upload, parse)
    ps = PromptSet(
        name=got.name,
        kind=SetKind.demonstration,
        k=1,
        overlap=1,
        status=SetStatus.archived,  # every task is done: nothing for labelers, nothing to resample
        source_filename=got.filename,
        created_by_id=upload.created_by_id,
        flags=[],
        report={"imported": got.report()},
    )
    session.add(ps)
    session.flush()
    user_id = system_user(session, f"imported-{got.name}")
    _write(session, ps.id, user_id, got.rows)
    return DemoImportResult(
        prompt_set=ps, kind=got.kind, rows=got.total, imported=len(got.rows), skipped=got.skipped
    )


def _write(session: Session, set_id: int, user_id: int, rows: list[Row]) -> None:
    """One prompt per conversation; one closed task, submitted annotation and demonstration per row."""
    now = utcnow()
    prompt_of = write_prompts(session, set_id, ((r.messages, as_text(r.messages), r.line) for r in rows), now)
    task_ids = _bulk(
        session,
        Task,
        [
            {
                "prompt_id": prompt_of[conversation_hash(r.messages)],
                "prompt_set_id": set_id,
                "status": "closed",
                "label_count": 1,
                "created_at": now,
            }
            for r in rows
        ],
    )
    assignment_ids = _bulk(
        session,
        Assignment,
        [
            {
                "task_id": tid,
                "user_id": user_id,
                "state": "submitted",
                "display_order": [],
                "lease_expires_at": now,
                "finished_at": now,
                "created_at": now,
            }
            for tid in task_ids
        ],
    )
    annotation_ids = _bulk(
        session,
        Annotation,
        [
            {
                "assignment_id": aid,
                "task_id": tid,
                "user_id": user_id,
                "notes": "",
                "inconsistency_confirmed": False,
                "created_at": now,
            }
            for tid, aid in zip(task_ids, assignment_ids, strict=True)
        ],
    )
    _bulk(
        session,
        Demonstration,
        [
            {
                "annotation_id": ann_id,
                "reply": r.reply,
                "draft_used": False,
                "review_status": ReviewStatus.unreviewed,
            }
            for r, ann_id in zip(rows, annotation_ids, strict=True)
        ],
    )
    session.flush()
