"""The records query: annotations one at a time, filtered, with their items and split.

Nothing here loads a whole dataset: annotation ids come a keyset page at a time, and each page
is read in two short queries, regrouped one annotation at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.exports.filters import Filters, pseudonym
from app.exports.formats import AnnotationRecord, ItemRecord
from app.labeling.models import Annotation, AnnotationItem, Completion, Task
from app.prompts.models import Prompt, PromptSet, SetKind
from app.ranking import SPLITS, split_of
from app.runs.models import ModelVersion

BATCH_ANNOTATIONS = 500  # annotations per written batch (Parquet row group: up to 18,000 pairs at K=9)
PAGE_ANNOTATIONS = 1_000  # annotations per database round trip


def annotation_conditions(filters: Filters, kind: str = SetKind.ranking) -> list[Any]:
    """The filters as SQL conditions on Annotation/Task, for the sets of one kind: the ranking
    exports read ranking sets only (a demonstration has no outputs ranked), the SFT export the
    demonstration sets."""
    conds: list[Any] = [Task.prompt_set_id.in_(select(PromptSet.id).where(PromptSet.kind == kind))]
    if filters.prompt_set_ids:
        conds.append(Task.prompt_set_id.in_(filters.prompt_set_ids))
    if filters.since:
        conds.append(Annotation.created_at >= filters.since)
    if filters.until:
        conds.append(Annotation.created_at < filters.until)
    if filters.labeler_ids:
        conds.append(Annotation.user_id.in_(filters.labeler_ids))
    if not filters.include_skipped:
        conds.append(Annotation.skip_reason.is_(None))
    if filters.policy_version_ids:
        # Correlated EXISTS (index on completion.task_id), not IN (subquery): no full scan per page.
        conds.append(
            select(Completion.id)
            .where(
                Completion.task_id == Annotation.task_id,
                Completion.model_version_id.in_(filters.policy_version_ids),
            )
            .exists()
        )
    if filters.min_labels > 1:
        conds.append(Task.label_count >= filters.min_labels)  # kept up to date by labeling
    return conds


def _id_pages(
    session: Session, filters: Filters, *, by_task: bool, page: int = PAGE_ANNOTATIONS
) -> Iterator[list[int]]:
    """Matching annotation ids in export order, a page at a time (keyset paging: each query is
    short and bounded, so no database sorts the whole result and no cursor stays open)."""
    conds = annotation_conditions(filters)
    last_task, last_id = -1, -1
    size = max(1, page // 10)  # a small first page, so the first bytes leave at once
    while True:
        q = select(Annotation.id, Annotation.task_id).join(Task, Task.id == Annotation.task_id)
        if by_task:
            q = q.where(
                or_(
                    Annotation.task_id > last_task,
                    and_(Annotation.task_id == last_task, Annotation.id > last_id),
                )
            )
            q = q.order_by(Annotation.task_id, Annotation.id)
        else:
            q = q.where(Annotation.id > last_id).order_by(Annotation.id)
        rows = session.execute(q.where(*conds).limit(size)).all()
        if not rows:
            return
        yield [r[0] for r in rows]
        last_id, last_task = rows[-1][0], rows[-1][1]
        if len(rows) < size:
            return
        size = page


# What every record says of its annotation, in this order (the SFT records query reads them too).
ANNOTATION_COLUMNS = (
    Annotation.id,
    Annotation.task_id,
    Annotation.user_id,
    Annotation.guideline_version,
    Annotation.created_at,
    Annotation.time_spent_ms,
)


def _annotations_query(ids: list[int]) -> Select[Any]:
    cols: list[Any] = [
        *ANNOTATION_COLUMNS,
        Annotation.notes,
        Annotation.skip_reason,
        Annotation.inconsistency_confirmed,
        Task.prompt_set_id,
        Prompt.id,
        Prompt.text,
        Prompt.messages,
    ]
    return (
        select(*cols)
        .join(Task, Task.id == Annotation.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(Annotation.id.in_(ids))
    )


def _items_query(ids: list[int], *, with_flags: bool) -> Select[Any]:
    # Flags are JSON, decoded per row: read them only when a format or filter needs them.
    cols: list[Any] = [
        AnnotationItem.annotation_id,
        AnnotationItem.completion_id,
        AnnotationItem.rank,
        AnnotationItem.rating,
        AnnotationItem.position,
        Completion.text,
        Completion.model_version_id,
    ]
    if with_flags:
        cols.append(AnnotationItem.flags)
    return (
        select(*cols)
        .join(Completion, Completion.id == AnnotationItem.completion_id)
        .where(AnnotationItem.annotation_id.in_(ids))
        .order_by(AnnotationItem.annotation_id, AnnotationItem.completion_id)
    )


@dataclass
class Counts:
    rows: int = 0
    annotations: int = 0
    pairs: int = 0
    ties: int = 0
    by_split: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    tasks: set[int] = field(default_factory=set)
    prompts: set[int] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("rows", "annotations", "pairs", "ties")},
            "tasks": len(self.tasks),
            "prompts": len(self.prompts),
            "rows_by_split": dict(self.by_split),
        }


class RecordNames:
    """What an export computes once per prompt and per labeler: the prompt's split (by its text)
    and the labeler's name in the file (a pseudonym, or the username with real_names)."""

    def __init__(self, *, session: Session, filters: Filters, secret: str, real_names: bool) -> None:
        self.filters, self.secret, self.real_names = filters, secret, real_names
        self.usernames = dict(session.execute(select(User.id, User.username)).all()) if real_names else {}
        self.splits: dict[int, str] = {}
        self.labelers: dict[int, str] = {}

    def split(self, prompt_id: int, prompt: str) -> str:
        found = self.splits.get(prompt_id)
        if found is None:
            f = self.filters
            found = self.splits[prompt_id] = split_of(prompt, seed=f.split_seed, fractions=f.split_fractions)
        return found

    def labeler(self, user_id: int) -> str:
        found = self.labelers.get(user_id)
        if found is None:
            found = self.labelers[user_id] = (
                self.usernames[user_id] if self.real_names else pseudonym(user_id, self.secret)
            )
        return found


def iter_records(
    *,
    session: Session,
    filters: Filters,
    secret: str,
    real_names: bool = False,
    by_task: bool = False,
    with_flags: bool = True,
) -> Iterator[AnnotationRecord]:
    """Annotations one at a time (items in completion order), filtered, with their split."""
    set_names = dict(session.execute(select(PromptSet.id, PromptSet.name)).all())
    policy_names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    names = RecordNames(session=session, filters=filters, secret=secret, real_names=real_names)
    with_flags = with_flags or filters.exclude_flagged
    # Two short queries per page (annotations with their prompt; items with their output text)
    # rather than one join: the annotation's columns are not repeated K times per page.
    for ids in _id_pages(session, filters, by_task=by_task):
        anns = {row[0]: row for row in session.execute(_annotations_query(ids))}
        items: dict[int, list[ItemRecord]] = {}
        for r in session.execute(_items_query(ids, with_flags=with_flags)):
            items.setdefault(r[0], []).append(
                ItemRecord(
                    completion_id=r[1],
                    text=r[5],
                    rank=r[2],
                    rating=r[3],
                    flags=(r[7] or []) if with_flags else [],
                    position=r[4],
                    model_version_id=r[6],
                    policy=policy_names.get(r[6]),
                )
            )
        for ann_id in ids:
            row = anns.get(ann_id)
            if row is None:
                continue  # deleted between the two queries (PostgreSQL, read committed)
            user_id, prompt_id, prompt = row[2], row[10], row[11]
            split = names.split(prompt_id, prompt)
            if filters.split and split != filters.split:
                continue
            mine = items.get(ann_id, [])
            if filters.exclude_flagged and any(it.flags for it in mine):
                continue
            name = names.labeler(user_id)
            yield AnnotationRecord(
                annotation_id=ann_id,
                task_id=row[1],
                prompt_set=set_names.get(row[9], ""),
                prompt_id=prompt_id,
                prompt=prompt,
                prompt_messages=row[12],
                labeler=name,
                guideline_version=row[3],
                created_at=row[4],
                time_spent_ms=row[5],
                notes=row[6] or "",
                skip_reason=row[7],
                inconsistency_confirmed=bool(row[8]),
                split=split,
                items=mine,
            )
