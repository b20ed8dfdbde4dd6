"""Claims jobs from the database, runs their handlers, reports progress and heartbeats.

A handler is `def run(ctx: JobContext) -> dict | None`; what it returns becomes the job's result.
It calls `ctx.progress(...)` at each step: that beats the heart and raises JobCancelled once
someone asks to cancel. It opens its own short sessions with `ctx.session()` and commits per step.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.runs import service as jobs
from app.runs.models import Job, JobStatus

log = logging.getLogger("ranklab.worker")

Handler = Callable[["JobContext"], "dict[str, Any] | None"]

# kind -> "module:function", imported when a job of that kind is first claimed.
HANDLERS: dict[str, str] = {
    "sample": "trainer.sampling:run_job",
    "train_reward": "trainer.reward_job:run_job",
    "train_ppo": "trainer.ppo_job:run_job",
    "promote": "trainer.round:promote_job",
}
_loaded: dict[str, Handler] = {}


def register(kind: str, handler: Handler) -> None:
    """Add or replace a handler in this process (tests, plugins)."""
    _loaded[kind] = handler


def resolve(kind: str) -> Handler:
    if kind not in _loaded:
        if kind not in HANDLERS:
            raise LookupError(f"no handler for job kind '{kind}' (known: {', '.join(known_kinds())})")
        module, _, name = HANDLERS[kind].partition(":")
        _loaded[kind] = getattr(importlib.import_module(module), name)
    return _loaded[kind]


def known_kinds() -> list[str]:
    return sorted(set(HANDLERS) | set(_loaded))


class JobLost(Exception):
    """Our claim was taken away (the job went stale and another worker has it)."""


@dataclass
class JobContext:
    job_id: int
    kind: str
    params: dict[str, Any]
    attempt: int
    worker_id: str
    sessions: sessionmaker[Session]
    lost: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress; raises JobCancelled if a cancel was asked for, JobLost if not ours."""
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")
        with self.session() as s:
            jobs.set_progress(session=s, job_id=self.job_id, fraction=fraction, message=message)
            if jobs.is_cancel_requested(session=s, job_id=self.job_id):
                raise jobs.JobCancelled()

    def check_cancelled(self) -> None:
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")
        with self.session() as s:
            if jobs.is_cancel_requested(session=s, job_id=self.job_id):
                raise jobs.JobCancelled()

    def metric(self, step: int, **values: float) -> None:
        with self.session() as s:
            jobs.add_metrics(session=s, job_id=self.job_id, step=step, values=values)

    def log(self, line: str) -> None:
        log.info("job %s: %s", self.job_id, line)
        with self.session() as s:
            jobs.log(session=s, job_id=self.job_id, line=line)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        worker_id: str | None = None,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 10.0,
        stale_seconds: float = 120.0,
        kinds: list[str] | None = None,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id or default_worker_id()
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.kinds = kinds
        self.stop = threading.Event()

    def run(self, *, burst: bool = False) -> int:
        """Work until stopped; with burst, until nothing is left to claim. Returns jobs run."""
        done = 0
        while not self.stop.is_set():
            with self.sessions.begin() as s:
                jobs.requeue_stale(session=s, stale_seconds=self.stale_seconds)
                jobs.fail_broken_chains(session=s)
            if self.run_one():
                done += 1
            elif burst:
                break
            else:
                self.stop.wait(self.poll_seconds)
        return done

    def run_one(self) -> bool:
        with self.sessions.begin() as s:
            job = jobs.claim(session=s, worker_id=self.worker_id, kinds=self.kinds)
            if job is None:
                return False
            ctx = JobContext(job_id=job.id, kind=job.kind, params=dict(job.params),
                             attempt=job.attempts, worker_id=self.worker_id, sessions=self.sessions)
        log.info("claimed job %s (%s), attempt %s", ctx.job_id, ctx.kind, ctx.attempt)
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(ctx, beating), daemon=True)
        beat.start()
        try:
            result = resolve(ctx.kind)(ctx)
        except jobs.JobCancelled:
            self._finish(ctx, lambda s, j: jobs.mark_cancelled(session=s, job=j))
        except JobLost as exc:
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001  (any failure of a handler is the job's failure)
            reason = f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s\n%s", ctx.job_id, reason, traceback.format_exc())
            self._finish(ctx, lambda s, j: jobs.fail(session=s, job=j, error=reason))
        else:
            self._finish(ctx, lambda s, j: jobs.complete(session=s, job=j, result=result))
        finally:
            beating.set()
            beat.join()
        return True

    def _finish(self, ctx: JobContext, action: Callable[[Session, Job], None]) -> None:
        with self.sessions.begin() as s:
            job = s.scalar(select(Job).where(Job.id == ctx.job_id).with_for_update())
            if job is None or job.worker_id != self.worker_id or job.status != JobStatus.running:
                log.warning("job %s is no longer ours; leaving it", ctx.job_id)
                return
            action(s, job)

    def _beat(self, ctx: JobContext, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_seconds):
            try:
                with self.sessions.begin() as s:
                    if not jobs.heartbeat(session=s, job_id=ctx.job_id, worker_id=self.worker_id):
                        ctx.lost.set()
                        return
            except Exception:  # noqa: BLE001  (a missed beat is retried at the next one)
                log.exception("heartbeat for job %s failed", ctx.job_id)


def wait_for(sessions: sessionmaker[Session], job_id: int, timeout: float = 60.0) -> Job:
    """Poll until the job finishes (tests, `--inline` helpers)."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            if job.status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled):
                return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
        time.sleep(0.1)
