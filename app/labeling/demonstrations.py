"""Demonstration tasks: the labeler writes the ideal assistant reply (InstructGPT step 1).

Taking, leasing and skipping (claim.py, submit.py) and the idempotent finish (finish.py's
`complete`) serve both task kinds; this module adds what a written reply needs: its checks (not
empty, within the token limit after the chat template, the draft one of the task's own), the
Demonstration row beside the annotation, and the edit distance from the draft it started from.
A submission is four statements: the assignment marked submitted (reading the conversation and
the policy folder on the way), the annotation, the demonstration, the task's label count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import chat
from app.db import utcnow
from app.labeling.finish import (
    Finished,
    SubmissionInvalid,
    already_finished,
    check_notes,
    complete,
    honour_lease,
    insert_row,
    store_annotation,
)
from app.labeling.models import Annotation, AssignmentState, Completion, Demonstration, ReviewStatus
from app.prompts import tokens
from app.prompts.models import Prompt, SetKind

MAX_REPLY_CHARS = 100_000  # a cap before any tokenizer runs; the token limit is the real one


@dataclass
class Written:
    """A stored outcome of a demonstration task: the annotation, and the reply unless skipped."""

    annotation: Annotation
    demonstration: Demonstration | None


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, replace one character) that turn `a` into `b`; O(len a * len b)
    time, O(min) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def check_reply(reply: Any) -> str:
    """The reply as stored (line ends as \\n, NFC, trimmed at the ends), or SubmissionInvalid."""
    if not isinstance(reply, str):
        raise SubmissionInvalid("reply", "the reply must be text")
    if "\x00" in reply:
        raise SubmissionInvalid("reply", "the reply cannot contain a NUL character (\\u0000)")
    if len(reply) > MAX_REPLY_CHARS:
        raise SubmissionInvalid("reply", f"at most {MAX_REPLY_CHARS} characters, got {len(reply)}")
    clean = chat.normalise_text(reply)
    if not clean:
        raise SubmissionInvalid("reply", "the reply is empty: write the assistant's reply")
    return clean


def reply_tokens(messages: chat.Conversation, reply: str, policy_path: str | None) -> int:
    """Positions the conversation with the reply last takes through the policy's chat template
    (an estimate when its folder has no tokenizer)."""
    count, _how = tokens.counter_at(policy_path, generation_prompt=False)
    return count(chat.with_reply(messages, reply))


def token_limit(max_tokens: int, policy_path: str | None) -> int:
    """RANKLAB_MAX_DEMONSTRATION_TOKENS, or the policy's context when that is shorter."""
    positions = tokens.positions_at(policy_path)
    return min(max_tokens, positions) if positions else max_tokens


# RETURNING columns of the submission's first statement (finish.finish): the conversation, the
# set's policy folder and the task's draft, so checking a reply needs no statement of its own.
_OF_TASK = "FROM task t JOIN prompt p ON p.id = t.prompt_id WHERE t.id = assignment.task_id"
_DRAFT = "FROM completion c WHERE c.task_id = assignment.task_id ORDER BY c.id LIMIT 1"
_EXTRA: tuple[Any, ...] = (
    literal_column(f"(SELECT p.messages {_OF_TASK})", Prompt.messages.type),  # noqa: S608 (constants)
    literal_column(
        "(SELECT mv.path FROM model_version mv JOIN prompt_set ps ON ps.policy_version_id = mv.id "
        "JOIN task t ON t.prompt_set_id = ps.id WHERE t.id = assignment.task_id)"
    ),
    literal_column(f"(SELECT c.id {_DRAFT})"),  # noqa: S608 (constants)
    literal_column(f"(SELECT c.text {_DRAFT})"),  # noqa: S608 (constants)
)


def submit_by_id(
    *,
    session: Session,
    assignment_id: int,
    user_id: int,
    reply: Any,
    draft_completion_id: Any = None,
    notes: str = "",
    time_spent_ms: int | None = None,
    max_tokens: int,
    now: datetime | None = None,
) -> Written | None:
    """Store one written reply whole; a second submission of the same assignment returns the
    first's annotation. None: not this labeler's. A broken rule raises SubmissionInvalid naming
    the field after the first statement was put back: nothing changed."""
    now = now or utcnow()
    clean = check_reply(reply)
    notes = check_notes(notes)
    if draft_completion_id is not None and (
        isinstance(draft_completion_id, bool) or not isinstance(draft_completion_id, int)
    ):
        raise SubmissionInvalid("draft_completion_id", "a completion id (a whole number) or null")
    store = partial(
        _store,
        session,
        reply=clean,
        draft_completion_id=draft_completion_id,
        notes=notes,
        time_spent_ms=time_spent_ms,
        max_tokens=max_tokens,
        now=now,
    )
    return complete(session, assignment_id, user_id, AssignmentState.submitted, now, store, _replay, _EXTRA)


def _replay(session: Session, assignment_id: int, user_id: int) -> Written | None:
    done = already_finished(session, assignment_id, user_id)
    return None if done is None else outcome(session=session, annotation=done)


def _store(
    session: Session,
    done: Finished,
    *,
    reply: str,
    draft_completion_id: int | None,
    notes: str,
    time_spent_ms: int | None,
    max_tokens: int,
    now: datetime,
) -> Written:
    if done.kind != SetKind.demonstration:
        raise SubmissionInvalid("kind", "this is a ranking task: rank its outputs (POST .../annotation)")
    messages, policy_path, draft_id, draft_text = done.extra
    if draft_completion_id is not None and draft_completion_id != draft_id:
        raise SubmissionInvalid(
            "draft_completion_id", f"completion {draft_completion_id} is not this task's draft"
        )
    limit = token_limit(max_tokens, policy_path)
    count = reply_tokens(list(messages), reply, policy_path)
    if count > limit:
        raise SubmissionInvalid(
            "reply",
            f"the conversation with this reply is {count} tokens after the chat template; at most {limit}: "
            "shorten the reply",
        )
    honour_lease(session, done, now)
    annotation = store_annotation(
        session, done, notes=notes, time_spent_ms=time_spent_ms, now=now, counts=True
    )
    demo = insert_row(
        session,
        Demonstration,
        {
            "annotation_id": annotation.id,
            "reply": reply,
            "draft_used": draft_completion_id is not None,
            "draft_completion_id": draft_completion_id,
            "edit_distance": levenshtein(draft_text, reply) if draft_completion_id is not None else None,
            "token_count": count,
            "review_status": ReviewStatus.unreviewed.value,
            "review_reason": None,
            "edited_reply": None,
            "reviewed_by_id": None,
            "reviewed_at": None,
        },
    )
    set_committed_value(demo, "annotation", annotation)
    return Written(annotation, demo)


def outcome(*, session: Session, annotation: Annotation) -> Written:
    """The annotation with its demonstration row (one statement when it is not in the session)."""
    demo = session.scalars(select(Demonstration).where(Demonstration.annotation_id == annotation.id)).first()
    return Written(annotation, demo)


def draft_of(*, session: Session, task_id: int) -> Completion | None:
    """The task's draft (a demonstration task has at most one), once written."""
    return session.scalars(
        select(Completion).where(Completion.task_id == task_id).order_by(Completion.id)
    ).first()
