"""Claims jobs from the database, runs their handlers, reports progress and heartbeats.

A handler is `def run(ctx: JobContext) -> dict | None`; what it returns becomes the job's result.
It calls `ctx.progress(...)` at each step: that beats the heart and raises JobCancelled once
someone asks to cancel. It opens its own short sessions with `ctx.session()` and commits per step.

Kinds map to handlers in HANDLERS; a process adds its own with `register(kind, fn)`, and a worker
process started from the command line with RANKLAB_EXTRA_HANDLERS="kind=module:function,...".
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
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


def extra_handlers(spec: str | None = None) -> dict[str, str]:
    """RANKLAB_EXTRA_HANDLERS="kind=module:function,kind2=module:function": handlers a worker
    process should know beyond HANDLERS (plugins; the tests' slow handlers for worker processes)."""
    spec = get_settings().extra_handlers if spec is None else spec
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        kind, _, target = item.partition("=")
        if not kind.strip() or ":" not in target:
            raise ValueError(
                f"RANKLAB_EXTRA_HANDLERS: '{item}' is not kind=module:function "
                "(e.g. RANKLAB_EXTRA_HANDLERS=mykind=mypkg.jobs:run_job)"
            )
        out[kind.strip()] = target.strip()
    return out


def resolve(kind: str) -> Handler:
    if kind not in _loaded:
        targets = {**HANDLERS, **extra_handlers()}
        if kind not in targets:
            raise LookupError(f"no handler for job kind '{kind}' (known: {', '.join(known_kinds())})")
        module, _, name = targets[kind].partition(":")
        _loaded[kind] = getattr(importlib.import_module(module), name)
    return _loaded[kind]


def known_kinds() -> list[str]:
    return sorted(set(HANDLERS) | set(extra_handlers()) | set(_loaded))


def _busy(exc: OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def in_transaction(sessions: sessionmaker[Session], fn: Callable[[Session], Any], tries: int = 8) -> Any:
    """fn(session) in its own transaction. SQLite answers "database is locked" at once (not
    after busy_timeout) when a transaction that has read tries to write after another process
    committed; the whole transaction is then retried, so no progress or finish is lost."""
    for attempt in range(tries):
        try:
            with sessions.begin() as session:
                return fn(session)
        except OperationalError as exc:
            if not _busy(exc) or attempt == tries - 1:
                raise
            time.sleep(0.02 * 2**attempt)
    raise AssertionError("unreachable")


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

        def step(s: Session) -> bool:
            # The guarded heartbeat first: a worker that lost its claim must not write progress.
            if not jobs.heartbeat(session=s, job_id=self.job_id, worker_id=self.worker_id):
                self.lost.set()
                return False
            jobs.set_progress(session=s, job_id=self.job_id, fraction=fraction, message=message)
            return jobs.is_cancel_requested(session=s, job_id=self.job_id)

        cancel = in_transaction(self.sessions, step)
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")
        if cancel:
            raise jobs.JobCancelled()

    def check_cancelled(self) -> None:
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")
        if in_transaction(self.sessions, lambda s: jobs.is_cancel_requested(session=s, job_id=self.job_id)):
            raise jobs.JobCancelled()

    def metric(self, step: int, **values: float) -> None:
        in_transaction(
            self.sessions, lambda s: jobs.add_metrics(session=s, job_id=self.job_id, step=step, values=values)
        )

    def log(self, line: str) -> None:
        log.info("job %s: %s", self.job_id, line)
        in_transaction(self.sessions, lambda s: jobs.log(session=s, job_id=self.job_id, line=line))


def default_worker_id() -> str:
    # The random tail keeps ids unique where pids repeat (containers all run as pid 1).
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


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
        previous = None
        if threading.current_thread() is threading.main_thread():
            # `docker stop`, `ranklab serve` ending, systemd: SIGTERM stops like Ctrl-C, and the
            # job in hand goes straight back to the queue (see run_one) instead of going stale.
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        done = 0
        try:
            while not self.stop.is_set():
                self.maintain()
                if self.run_one():
                    done += 1
                elif burst:
                    break
                else:
                    self.stop.wait(self.poll_seconds)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return done

    def maintain(self) -> None:
        """Requeue jobs of dead workers and fail chains that can no longer run."""
        in_transaction(
            self.sessions,
            lambda s: (
                jobs.requeue_stale(session=s, stale_seconds=self.stale_seconds),
                jobs.fail_broken_chains(session=s),
            ),
        )

    def run_one(self) -> bool:
        """Claim one job and run it to its end. False when nothing was claimable."""

        def take(s: Session) -> JobContext | None:
            job = jobs.claim(session=s, worker_id=self.worker_id, kinds=self.kinds)
            if job is None:
                return None
            return JobContext(
                job_id=job.id,
                kind=job.kind,
                params=dict(job.params),
                attempt=job.attempts,
                worker_id=self.worker_id,
                sessions=self.sessions,
            )

        ctx: JobContext | None = in_transaction(self.sessions, take)
        if ctx is None:
            return False
        log.info("claimed job %s (%s), attempt %s", ctx.job_id, ctx.kind, ctx.attempt)
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(ctx, beating), daemon=True)
        beat.start()
        try:
            result = resolve(ctx.kind)(ctx)
        except jobs.JobCancelled:
            self._finish(ctx, lambda s, j: jobs.mark_cancelled(session=s, job=j))
        except KeyboardInterrupt:
            reason = f"worker {self.worker_id} was stopped"
            log.warning("job %s: %s; giving it back to the queue", ctx.job_id, reason)
            self._finish(ctx, lambda s, j: jobs.release(session=s, job=j, reason=reason))
            raise
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
        def finish(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == ctx.job_id).with_for_update())
            if job is None or job.worker_id != self.worker_id or job.status != JobStatus.running:
                log.warning("job %s is no longer ours; leaving it", ctx.job_id)
                return
            action(s, job)

        in_transaction(self.sessions, finish)

    def _beat(self, ctx: JobContext, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_seconds):
            try:
                if not in_transaction(
                    self.sessions,
                    lambda s: jobs.heartbeat(session=s, job_id=ctx.job_id, worker_id=self.worker_id),
                ):
                    ctx.lost.set()
                    return
            except Exception:  # noqa: BLE001  (a missed beat is retried at the next one)
                log.exception("heartbeat for job %s failed", ctx.job_id)
