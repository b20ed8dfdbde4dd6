"""A set's tasks and the `sample` job that makes them: opening a demonstration set's tasks,
queueing sampling, its progress, cancelling and resuming it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, literal, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.labeling.models import Completion, Task, TaskStatus
from app.prompts.models import Prompt, PromptSet, SetKind, SetStatus
from app.runs import service as jobs
from app.runs.models import FINISHED, Job, JobStatus


def open_demonstration_tasks(*, session: Session, prompt_set: PromptSet) -> None:
    """One open task per prompt of a demonstration set that has none: labelers write its reply,
    so nothing needs sampling first."""
    has_task = select(Task.id).where(Task.prompt_id == Prompt.id).exists()
    session.execute(
        insert(Task).from_select(
            ["prompt_id", "prompt_set_id", "status", "label_count", "created_at"],
            select(
                Prompt.id,
                literal(prompt_set.id),
                literal(TaskStatus.open.value),
                literal(0),
                literal(utcnow(), Task.created_at.type),
            )
            .where(Prompt.prompt_set_id == prompt_set.id, ~has_task)
            .order_by(Prompt.id),
        )
    )


def start_sampling(*, session: Session, prompt_set: PromptSet, created_by_id: int | None = None) -> Job:
    """Queue a `sample` job for the set's prompts that have no task yet (of a demonstration set:
    its tasks without a draft; they stay open meanwhile, so the set stays active)."""
    job = jobs.enqueue(
        session=session, kind="sample", params={"prompt_set_id": prompt_set.id}, created_by_id=created_by_id
    )
    if prompt_set.kind != SetKind.demonstration:
        prompt_set.status = SetStatus.sampling
    prompt_set.report = {**prompt_set.report, "job_id": job.id}
    session.flush()
    return job


def open_tasks(*, session: Session, prompt_set: PromptSet, created_by_id: int | None = None) -> None:
    """Tasks for the set's prompts that have none: a demonstration set's open at once (labelers
    write the reply; no completions needed); a ranking set's come from a `sample` job, queued
    unless one is queued already (it reads the prompts without a task when it starts)."""
    if prompt_set.kind == SetKind.demonstration:
        open_demonstration_tasks(session=session, prompt_set=prompt_set)
        return
    job = sampling_job(session=session, prompt_set=prompt_set)
    if job is None or job.status != JobStatus.queued:
        start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)


def sampling_job(*, session: Session, prompt_set: PromptSet) -> Job | None:
    job_id = (prompt_set.report or {}).get("job_id")
    return session.get(Job, job_id) if job_id else None


@dataclass
class Progress:
    total: int
    done: int  # prompts sampled (a demonstration set: tasks with their draft written)
    job: Job | None
    rate: float | None  # prompts per second over this job's run
    eta_seconds: float | None
    kind: str = SetKind.ranking
    # A demonstration set: replies written, and those wanted (each task `overlap` times).
    written: int = 0
    needed: int = 0

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.status in (JobStatus.queued, JobStatus.running)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.total,
            "done": self.done,
            "rate_per_s": self.rate,
            "eta_seconds": self.eta_seconds,
            "job": None
            if self.job is None
            else {
                "id": self.job.id,
                "status": self.job.status,
                "message": self.job.message,
                "error": self.job.error,
            },
        }
        if self.kind == SetKind.demonstration:
            out |= {"demonstrations_written": self.written, "demonstrations_needed": self.needed}
        return out


def progress(*, session: Session, prompt_set: PromptSet) -> Progress:
    total = (
        session.scalar(select(func.count()).select_from(Prompt).where(Prompt.prompt_set_id == prompt_set.id))
        or 0
    )
    demonstration = prompt_set.kind == SetKind.demonstration
    written = needed = 0
    if demonstration:
        drafted = select(Completion.id).where(Completion.task_id == Task.id).exists()
        done, tasks, written = session.execute(
            select(
                func.count().filter(drafted),
                func.count(),
                func.coalesce(func.sum(Task.label_count), 0),
            ).where(Task.prompt_set_id == prompt_set.id)
        ).one()
        needed = int(tasks) * prompt_set.overlap
    else:
        done = (
            session.scalar(
                select(func.count(func.distinct(Task.prompt_id))).where(
                    Task.prompt_set_id == prompt_set.id, Task.status != TaskStatus.sampling
                )
            )
            or 0
        )
    job = sampling_job(session=session, prompt_set=prompt_set)
    rate = eta = None
    if (
        job is not None
        and job.status == JobStatus.running
        and job.started_at is not None
        and not demonstration
    ):
        by_job = (
            session.scalar(select(func.count()).select_from(Task).where(Task.sampling_job_id == job.id)) or 0
        )
        elapsed = (utcnow() - job.started_at).total_seconds()
        if by_job and elapsed > 0:
            rate = by_job / elapsed
            eta = (total - done) / rate
    return Progress(
        total=total,
        done=int(done or 0),
        job=job,
        rate=rate,
        eta_seconds=eta,
        kind=prompt_set.kind,
        written=int(written),
        needed=needed,
    )


def cancel_sampling(*, session: Session, prompt_set: PromptSet) -> Job | None:
    job = sampling_job(session=session, prompt_set=prompt_set)
    if job is not None and job.status not in FINISHED:
        jobs.request_cancel(session=session, job=job)
        if job.status == JobStatus.cancelled:  # it had not started: nothing else will update the set
            prompt_set.status = SetStatus.active
            session.flush()
    return job


def resume_sampling(
    *, session: Session, prompt_set: PromptSet, created_by_id: int | None = None
) -> Job | None:
    """After a cancel or a failure: sample the prompts still without completions."""
    job = sampling_job(session=session, prompt_set=prompt_set)
    if job is not None and job.status not in FINISHED:
        return job
    prog = progress(session=session, prompt_set=prompt_set)
    if prog.done >= prog.total:
        return None
    return start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)
