"""Drafts of a demonstration set: one completion of the policy per open task, written beside it.

The tasks are open from the import on and stay open while this runs: a draft is only a starting
point a labeler may pick ("Start from a draft"). A task that already has a draft, or that closed
meanwhile, is left alone; a draft the policy could only write empty is no draft (the labeler
writes from scratch). A job claimed again after its worker died starts from the tasks still
without one, and each write checks again, so no task ever gets two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, select

from app.labeling.models import Completion, Task, TaskStatus
from app.prompts.models import Prompt
from trainer.runner import JobContext

if TYPE_CHECKING:
    from trainer.sampling.backends import SamplingParams
    from trainer.sampling.job import _Marked, _Pending, _Tagged


def completion(
    task_id: int, tagged: _Tagged, record: dict[str, Any], *, duplicate: bool = False
) -> Completion:
    """The row of one sample: the set's parameters, and what was actually asked of whom."""
    vid, smp, seed = tagged
    return Completion(
        task_id=task_id,
        model_version_id=vid,
        text=smp.text,
        params={**record, "request": smp.request} if smp.request else record,
        seed=seed,
        finish_reason=smp.finish_reason,
        token_count=smp.token_count,
        is_duplicate=duplicate,
    )


def draft_tasks(s: Any, set_id: int) -> tuple[int, list[_Pending]]:
    """(tasks of the set, [(task id, its conversation)] of the open ones without a draft)."""
    has_draft = exists().where(Completion.task_id == Task.id)
    rows = s.execute(
        select(Task.id, Prompt.messages, has_draft, Task.status)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(Task.prompt_set_id == set_id)
        .order_by(Task.id)
    ).all()
    pending = [(tid, messages) for tid, messages, drafted, status in rows if not drafted and status == "open"]
    return len(rows), pending


def write_drafts(
    ctx: JobContext,
    set_id: int,
    batch: list[_Pending],
    per_task: list[_Marked | None],
    params: SamplingParams,
    backend_name: str,
) -> int:
    """One transaction per batch: each task's one draft. Returns the drafts written."""
    record = {**params.as_dict(), "backend": backend_name, "draft": True}
    written = 0
    with ctx.session() as s:
        for (task_id, _), result in zip(batch, per_task, strict=True):
            if result is None:
                continue
            undrafted = ~exists().where(Completion.task_id == task_id)
            if s.scalar(select(Task.status).where(Task.id == task_id, undrafted)) != TaskStatus.open:
                continue  # drafted by a worker that lost this job, or closed meanwhile
            s.add(completion(task_id, result[0][0][0], record))
            written += 1
    return written
