"""The job queue. Rows in `job` are the queue and the record the dashboard reads.

Claiming is safe under any number of workers: on PostgreSQL the candidate row is locked with
FOR UPDATE SKIP LOCKED, on SQLite the database serialises writers. A running job whose
heartbeat is older than the stale limit is requeued (or failed, once out of attempts).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.config import get_settings
from app.db import utcnow
from app.runs.models import FINISHED, Job, JobMetric, JobStatus

LOG_KEEP_CHARS = 20_000


class JobCancelled(Exception):
    """Raised inside a handler at its next step after someone asked to cancel."""


def enqueue(
    *,
    session: Session,
    kind: str,
    params: dict[str, Any] | None = None,
    created_by_id: int | None = None,
    after: Job | None = None,
    max_attempts: int | None = None,
) -> Job:
    """A queued job. `after`: it waits for that job to succeed. `max_attempts` defaults to
    RANKLAB_JOB_MAX_ATTEMPTS: how many claims (one per worker that died on it) it gets."""
    if max_attempts is None:
        max_attempts = get_settings().job_max_attempts
    job = Job(
        kind=kind,
        params=params or {},
        created_by_id=created_by_id,
        after_id=after.id if after else None,
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def requeue_stale(*, session: Session, stale_seconds: float) -> int:
    """Running jobs whose worker stopped beating go back to the queue, or fail when out of tries."""
    cutoff = utcnow() - timedelta(seconds=stale_seconds)
    stale = list(
        session.scalars(
            select(Job)
            .where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        )
    )
    for job in stale:
        note = f"worker {job.worker_id} stopped answering (last heartbeat {job.heartbeat_at:%H:%M:%S})"
        if job.cancel_requested:
            _finish(job, JobStatus.cancelled, error=None, message="cancelled")
        elif job.attempts >= job.max_attempts:
            _finish(
                job,
                JobStatus.failed,
                error=f"{note}; gave up after {job.attempts} attempts",
                message="failed",
            )
        else:
            job.status = JobStatus.queued
            job.worker_id = None
            job.message = f"requeued: {note}"
            _append_log(job, job.message)
    session.flush()
    return len(stale)


def fail_broken_chains(*, session: Session) -> int:
    """A queued job whose predecessor failed or was cancelled can never run: say why.

    Repeats until nothing changes, so a whole chain (a <- b <- c) fails in one call. Returns
    how many jobs it failed."""
    before = aliased(Job)
    total = 0
    while True:
        rows = session.execute(
            select(Job, before)
            .join(before, Job.after_id == before.id)
            .where(Job.status == JobStatus.queued, before.status.in_([JobStatus.failed, JobStatus.cancelled]))
        ).all()
        if not rows:
            return total
        for job, prev in rows:
            _finish(
                job,
                JobStatus.failed,
                message="not started",
                error=f"the step before it, job {prev.id} ({prev.kind}), {prev.status}"
                + (f": {prev.error}" if prev.error else ""),
            )
        total += len(rows)
        session.flush()


def claim(
    *, session: Session, worker_id: str, kinds: list[str] | None = None, job_id: int | None = None
) -> Job | None:
    """Take the oldest runnable job (or job `job_id`, for a run in this terminal), or None.
    The caller commits at once.

    One UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING: on PostgreSQL
    concurrent workers skip each other's row; on SQLite the single statement takes the write
    lock before it reads, so two workers never both see the same row as free (and a worker
    never gives up early because another won a race for the row it had picked).
    """
    # Aliases, so the subquery never correlates with the UPDATE's own `job`.
    cand, before = aliased(Job), aliased(Job)
    candidate = (
        select(cand.id)
        .outerjoin(before, cand.after_id == before.id)
        .where(
            cand.status == JobStatus.queued,
            or_(cand.after_id.is_(None), before.status == JobStatus.succeeded),
        )
        .order_by(cand.created_at, cand.id)
        .limit(1)
        .with_for_update(of=cand, skip_locked=True)
    )
    if kinds is not None:
        candidate = candidate.where(cand.kind.in_(kinds))
    if job_id is not None:
        candidate = candidate.where(cand.id == job_id)
    now = utcnow()
    claimed = session.scalar(
        update(Job)
        # The status guard keeps the claim atomic even where FOR UPDATE is a no-op.
        .where(Job.id == candidate.scalar_subquery(), Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            worker_id=worker_id,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            message="started",
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        return None
    job = session.get(Job, claimed, populate_existing=True)
    assert job is not None
    _append_log(job, f"attempt {job.attempts} on {worker_id}")
    session.flush()
    return job


def heartbeat(*, session: Session, job_id: int, worker_id: str) -> bool:
    """Keep the claim alive. False when the job is no longer ours (requeued to someone else)."""
    still_ours = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.running)
        .values(heartbeat_at=utcnow())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return still_ours is not None


def set_progress(*, session: Session, job_id: int, fraction: float, message: str = "") -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(progress=max(0.0, min(1.0, fraction)), message=message[:500], heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def is_cancel_requested(*, session: Session, job_id: int) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def request_cancel(*, session: Session, job: Job) -> None:
    """A queued job is cancelled at once; a running one stops at its next step."""
    if job.status == JobStatus.queued:
        _finish(job, JobStatus.cancelled, error=None, message="cancelled before it started")
    elif job.status == JobStatus.running:
        job.cancel_requested = True
        job.message = "cancelling…"
    session.flush()


def complete(*, session: Session, job: Job, result: dict[str, Any] | None = None) -> None:
    job.result = result or {}
    job.progress = 1.0
    _finish(job, JobStatus.succeeded, error=None, message="done")
    session.flush()


def fail(*, session: Session, job: Job, error: str) -> None:
    _finish(job, JobStatus.failed, error=error, message="failed")
    session.flush()


def mark_cancelled(*, session: Session, job: Job) -> None:
    _finish(job, JobStatus.cancelled, error=None, message="cancelled")
    session.flush()


def release(*, session: Session, job: Job, reason: str) -> None:
    """Give a running job back to the queue now (its worker is shutting down), without using
    up an attempt: the stale limit is for workers that die, not ones that are told to stop."""
    if job.status != JobStatus.running:
        return
    if job.cancel_requested:
        _finish(job, JobStatus.cancelled, error=None, message="cancelled")
    else:
        job.status = JobStatus.queued
        job.worker_id = None
        job.attempts = max(0, job.attempts - 1)
        job.message = f"requeued: {reason}"
        _append_log(job, job.message)
    session.flush()


def add_metrics(*, session: Session, job_id: int, step: int, values: dict[str, float]) -> None:
    session.add_all(
        JobMetric(job_id=job_id, step=step, name=name, value=float(value)) for name, value in values.items()
    )
    session.flush()


def metrics(*, session: Session, job_id: int) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value), ...] in step order: what the run page draws."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in session.execute(
        select(JobMetric.name, JobMetric.step, JobMetric.value)
        .where(JobMetric.job_id == job_id)
        .order_by(JobMetric.name, JobMetric.step)
    ):
        out.setdefault(name, []).append((step, value))
    return out


def log(*, session: Session, job_id: int, line: str) -> None:
    job = session.get(Job, job_id)
    if job is not None:
        _append_log(job, line)
        session.flush()


def queue_counts(*, session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: count for status, count in rows}


def _finish(job: Job, status: JobStatus, *, error: str | None, message: str) -> None:
    if job.status in FINISHED:
        return
    job.status = status
    job.error = error
    job.message = message
    job.finished_at = utcnow()
    _append_log(job, f"{status}" + (f": {error}" if error else ""))


def _append_log(job: Job, line: str) -> None:
    stamped = f"{utcnow():%Y-%m-%d %H:%M:%S} {line}\n"
    job.log = ((job.log or "") + stamped)[-LOG_KEEP_CHARS:]
