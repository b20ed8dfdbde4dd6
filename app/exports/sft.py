"""The SFT records query: the demonstrations that count for training, as `ranklab export sft` rows.

The one query both the export (CLI, page, API) and the `train_sft` job read (trainer/sft/data.py
runs the export itself), so a run's data manifest is the export's, sha256 and all. A
demonstration counts when its set's `train_on` says so (not_rejected: accepted or not yet
reviewed; accepted; all), and its reply is `Demonstration.final_reply` (a reviewer's edit wins).
The split is by prompt, with the same function and seed as every other export.

A row is TRL SFTTrainer's conversational shape, `{"messages": [..., {"role": "assistant",
"content": reply}]}`, plus who wrote it (pseudonymised as other exports), the set, the split and
how it was written (draft used, edit distance, review status).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.exports.filters import ExportError, Filters
from app.exports.records import (
    ANNOTATION_COLUMNS,
    BATCH_ANNOTATIONS,
    PAGE_ANNOTATIONS,
    Counts,
    RecordNames,
    annotation_conditions,
)
from app.labeling.models import Annotation, Demonstration, ReviewStatus, Task
from app.prompts.models import Prompt, PromptSet, SetKind, TrainOn


def counts_for_training() -> Any:
    """The SQL condition "this demonstration counts", per its set's `train_on`."""
    status = Demonstration.review_status
    return or_(
        PromptSet.train_on == TrainOn.all,
        and_(PromptSet.train_on == TrainOn.accepted, status == ReviewStatus.accepted),
        and_(
            PromptSet.train_on.notin_((TrainOn.all, TrainOn.accepted)),
            status != ReviewStatus.rejected,
        ),
    )


def check_filters(filters: Filters) -> None:
    """Refuse the ranking-only filters rather than ignore them silently."""
    if filters.policy_version_ids:
        raise ExportError("policy", "does not apply to sft: demonstrations are written, not sampled")
    if filters.exclude_flagged:
        raise ExportError("exclude_flagged", "does not apply to sft: demonstrations carry no flags")
    if filters.include_skipped:
        raise ExportError("include_skipped", "does not apply to sft: a skip has no reply to learn")


def _query(filters: Filters, after: int, size: int) -> Any:
    return (
        select(
            Demonstration.id,
            Demonstration.reply,
            Demonstration.edited_reply,
            Demonstration.draft_used,
            Demonstration.edit_distance,
            Demonstration.review_status,
            *ANNOTATION_COLUMNS,
            PromptSet.name,
            Prompt.id,
            Prompt.text,
            Prompt.messages,
        )
        .join(Annotation, Annotation.id == Demonstration.annotation_id)
        .join(Task, Task.id == Annotation.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(
            Demonstration.id > after,
            counts_for_training(),
            *annotation_conditions(filters, SetKind.demonstration),
        )
        .order_by(Demonstration.id)
        .limit(size)
    )


def iter_sft_rows(
    *,
    session: Session,
    filters: Filters,
    secret: str,
    real_names: bool = False,
    counts: Counts,
    batch_size: int = BATCH_ANNOTATIONS,
) -> Iterator[list[dict[str, Any]]]:
    """Batches of SFT rows in demonstration order, counted into `counts` (keyset pages)."""
    check_filters(filters)
    names = RecordNames(session=session, filters=filters, secret=secret, real_names=real_names)
    batch: list[dict[str, Any]] = []
    last = -1
    while True:
        rows = session.execute(_query(filters, last, PAGE_ANNOTATIONS)).all()
        for r in rows:
            (demo_id, reply, edited, draft_used, distance, status) = r[:6]
            (ann_id, task_id, user_id, guideline, created, spent, set_name, prompt_id, text, messages) = r[6:]
            split = names.split(prompt_id, text)
            if filters.split and split != filters.split:
                continue
            name = names.labeler(user_id)
            final = edited if edited is not None else reply  # Demonstration.final_reply
            batch.append(
                {
                    "messages": [*messages, {"role": "assistant", "content": final}],
                    "prompt_set": set_name,
                    "prompt_id": prompt_id,
                    "task_id": task_id,
                    "annotation_id": ann_id,
                    "demonstration_id": demo_id,
                    "split": split,
                    "labeler": name,
                    "guideline_version": guideline,
                    "created_at": created.isoformat(),
                    "time_spent_ms": spent,
                    "draft_used": bool(draft_used),
                    "edit_distance": distance,
                    "review_status": status,
                    "edited_by_reviewer": edited is not None,
                }
            )
            counts.rows += 1
            counts.annotations += 1
            counts.by_split[split] += 1
            counts.tasks.add(task_id)
            counts.prompts.add(prompt_id)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if len(rows) < PAGE_ANNOTATIONS:
            break
        last = rows[-1][0]
    if batch:
        yield batch
