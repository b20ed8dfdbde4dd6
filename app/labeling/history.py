"""A labeler's own history: past rankings and demonstrations, counts, median time per task."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import newest_first
from app.labeling.models import Annotation, Demonstration, Task
from app.labeling.task_view import letter
from app.prompts import proposals
from app.prompts.models import Prompt


@dataclass
class History:
    annotations: list[Annotation]
    submitted: int
    skipped: int
    median_ms: float | None
    prompts: dict[int, str]
    orders: dict[int, str] = field(default_factory=dict)  # annotation id -> "B > A = C > D"
    proposals: list[proposals.Row] = field(default_factory=list)  # prompts they wrote, and their fate
    # annotation id -> the reply written (a demonstration task), with its draft and review marks
    demonstrations: dict[int, Demonstration] = field(default_factory=dict)


def ranking_text(annotation: Annotation) -> str:
    """Letters as the labeler saw them, best first: "B > A = C > D"."""
    items = sorted(annotation.items, key=lambda i: (i.rank, i.position or 0))
    out = ""
    for n, item in enumerate(items):
        if n:
            out += " = " if item.rank == items[n - 1].rank else " > "
        out += letter(item.position) if item.position is not None else str(item.completion_id)
    return out


def history(*, session: Session, user: User, limit: int = 200) -> History:
    rows = list(
        session.scalars(
            newest_first(
                select(Annotation).where(Annotation.user_id == user.id),
                Annotation.created_at,
                Annotation.id,
                limit=limit,
            )
        ).all()
    )
    counts = dict(
        session.execute(
            select(Annotation.skip_reason.is_(None), func.count())
            .where(Annotation.user_id == user.id)
            .group_by(Annotation.skip_reason.is_(None))
        ).all()
    )
    times = [
        int(t)
        for t in session.scalars(
            select(Annotation.time_spent_ms).where(
                Annotation.user_id == user.id,
                Annotation.skip_reason.is_(None),
                Annotation.time_spent_ms.is_not(None),
            )
        ).all()
        if t is not None
    ]
    task_ids = {a.task_id for a in rows}
    prompts = (
        dict(
            session.execute(
                select(Task.id, Prompt.text)
                .join(Prompt, Prompt.id == Task.prompt_id)
                .where(Task.id.in_(task_ids))
            ).all()
        )
        if task_ids
        else {}
    )
    demonstrations = (
        {
            d.annotation_id: d
            for d in session.scalars(
                select(Demonstration).where(Demonstration.annotation_id.in_([a.id for a in rows]))
            )
        }
        if rows
        else {}
    )
    return History(
        annotations=rows,
        submitted=int(counts.get(True, 0)),
        skipped=int(counts.get(False, 0)),
        median_ms=statistics.median(times) if times else None,
        prompts=prompts,
        orders={a.id: ranking_text(a) for a in rows if not a.skip_reason and a.items},
        proposals=proposals.listing(session=session, user_id=user.id),
        demonstrations=demonstrations,
    )
