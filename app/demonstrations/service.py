"""Review of demonstrations: list with filters, accept, reject with a reason, edit (both versions
kept: the labeler's `reply`, the reviewer's `edited_reply`, which training uses), and the
per-labeler figures of /quality."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.chat import normalise_text
from app.db import newest_first, utcnow
from app.errors import MAX_TEXT, Invalid, check_text, found
from app.labeling.models import Annotation, Demonstration, ReviewStatus, Task
from app.prompts.models import Prompt, PromptSet

MAX_REASON = 2000


@dataclass
class Row:
    demo: Demonstration
    messages: list[Any]  # the prompt's conversation
    set_id: int
    set_name: str

    @property
    def annotation(self) -> Annotation:
        return self.demo.annotation


def listing(
    *,
    session: Session,
    set_id: int | None = None,
    user_id: int | None = None,
    status: str | None = None,
    demo_id: int | None = None,
    limit: int = 200,
) -> list[Row]:
    """Newest first, filtered by set, labeler and review status."""
    query = (
        select(Demonstration, Prompt, PromptSet.id, PromptSet.name)
        .join(Annotation, Annotation.id == Demonstration.annotation_id)
        .join(Task, Task.id == Annotation.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
    )
    query = newest_first(
        query,
        Annotation.created_at,
        Demonstration.id,
        (Task.prompt_set_id, set_id),
        (Annotation.user_id, user_id),
        (Demonstration.review_status, status),
        (Demonstration.id, demo_id),
        limit=limit,
    )
    return [
        Row(demo=d, messages=prompt.messages, set_id=sid, set_name=name)
        for d, prompt, sid, name in session.execute(query).unique().all()
    ]


def labeler_ids(*, session: Session) -> list[int]:
    """Who has written demonstrations (the labeler filter's choices)."""
    return list(
        session.scalars(
            select(Annotation.user_id)
            .join(Demonstration, Demonstration.annotation_id == Annotation.id)
            .distinct()
            .order_by(Annotation.user_id)
        )
    )


def get(*, session: Session, demo_id: int) -> Demonstration:
    return found(session.get(Demonstration, demo_id), f"No demonstration with id {demo_id}.")


def _review(demo: Demonstration, reviewer: User, status: str, reason: str | None) -> None:
    demo.review_status, demo.review_reason = status, reason
    demo.reviewed_by_id, demo.reviewed_at = reviewer.id, utcnow()


def accept(*, session: Session, demo: Demonstration, reviewer: User) -> None:
    _review(demo, reviewer, ReviewStatus.accepted, None)
    session.flush()


def reject(*, session: Session, demo: Demonstration, reviewer: User, reason: str) -> None:
    reason = check_text(reason, field="reason", max_length=MAX_REASON).strip()
    if not reason:
        raise Invalid("reason", "say why, so the labeler learns from it")
    _review(demo, reviewer, ReviewStatus.rejected, reason)
    session.flush()


def edit(*, session: Session, demo: Demonstration, reviewer: User, reply: str) -> None:
    """The reviewer's version, which training uses; the labeler's reply stays as written. An
    edited demonstration is accepted (the reviewer made it what it should be)."""
    text = normalise_text(check_text(reply, field="reply", max_length=MAX_TEXT * 5))
    if not text:
        raise Invalid("reply", "is empty: write the reply, or reject the demonstration")
    demo.edited_reply = None if text == demo.reply else text
    _review(demo, reviewer, ReviewStatus.accepted, None)
    session.flush()


def accept_many(*, session: Session, ids: Sequence[int], reviewer: User) -> int:
    """Accept the not yet reviewed ones among `ids`; returns how many."""
    demos = session.scalars(
        select(Demonstration).where(
            Demonstration.id.in_(ids), Demonstration.review_status == ReviewStatus.unreviewed
        )
    ).all()
    for demo in demos:
        _review(demo, reviewer, ReviewStatus.accepted, None)
    session.flush()
    return len(demos)


# --- per-labeler figures (/quality) --------------------------------------------------------------


@dataclass
class LabelerDemoStats:
    user_id: int
    demonstrations: int
    accepted: int
    rejected: int
    median_time_s: float | None
    median_chars: float | None  # of the labeler's own reply, in characters

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over reviewed; None before any review."""
        reviewed = self.accepted + self.rejected
        return self.accepted / reviewed if reviewed else None


def labeler_stats(*, session: Session, set_ids: Sequence[int] = ()) -> list[LabelerDemoStats]:
    query = select(
        Annotation.user_id, Annotation.time_spent_ms, Demonstration.review_status, Demonstration.reply
    ).join(Demonstration, Demonstration.annotation_id == Annotation.id)
    if set_ids:
        query = query.join(Task, Task.id == Annotation.task_id).where(Task.prompt_set_id.in_(set_ids))
    by_user: dict[int, list[tuple[int | None, str, str]]] = {}
    for uid, ms, status, reply in session.execute(query):
        by_user.setdefault(uid, []).append((ms, status, reply))
    out = []
    for uid, rows in sorted(by_user.items()):
        times = [ms / 1000 for ms, _, _ in rows if ms is not None]
        out.append(
            LabelerDemoStats(
                user_id=uid,
                demonstrations=len(rows),
                accepted=sum(1 for _, s, _ in rows if s == ReviewStatus.accepted),
                rejected=sum(1 for _, s, _ in rows if s == ReviewStatus.rejected),
                median_time_s=statistics.median(times) if times else None,
                median_chars=statistics.median(len(r) for _, _, r in rows),
            )
        )
    return out
