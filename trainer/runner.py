"""Running one job: the handler table, the job context handlers see, and `run`, which the worker,
`--inline` commands and `ranklab demo` all call, so a job ends the same way wherever it runs.

A handler is `def run(ctx: JobContext) -> dict | None`; what it returns becomes the job's result.
It calls `ctx.progress(...)` at each step: that beats the heart and raises JobCancelled once
someone asks to cancel. It opens its own short sessions with `ctx.session()` and commits per step.

Kinds map to handlers in HANDLERS; a process adds its own with `register(kind, fn)`, and a worker
process started from the command line with RANKLAB_EXTRA_HANDLERS="kind=module:function,...".
Every end (done, failed, cancelled, given back) is written only while the job is still ours:
a process that lost its claim to another worker leaves the row alone.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.runs import service as jobs
from app.runs.models import Job, JobStatus
from app.runs.round_service import promote

log = logging.getLogger("ranklab.runner")

Handler = Callable[["JobContext"], "dict[str, Any] | None"]

# kind -> "module:function", imported when a job of that kind is first claimed.
HANDLERS: dict[str, str] = {
    "sample": "trainer.sampling.job:run_job",
    "train_reward": "trainer.reward.job:run_job",
    "train_ppo": "trainer.ppo.job:run_job",
    "train_sft": "trainer.sft.job:run_job",
    "promote": "trainer.runner:promote_job",
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

    def metric(self, step: int, **values: float) -> None:
        in_transaction(
            self.sessions, lambda s: jobs.add_metrics(session=s, job_id=self.job_id, step=step, values=values)
        )

    def log(self, line: str) -> None:
        log.info("job %s: %s", self.job_id, line)
        in_transaction(self.sessions, lambda s: jobs.log(session=s, job_id=self.job_id, line=line))


def claim(
    sessions: sessionmaker[Session],
    *,
    worker_id: str,
    kinds: list[str] | None = None,
    job_id: int | None = None,
) -> JobContext | None:
    """Claim the next runnable job (or job `job_id`) for `worker_id`, as a context to run it in."""

    def take(s: Session) -> JobContext | None:
        job = jobs.claim(session=s, worker_id=worker_id, kinds=kinds, job_id=job_id)
        if job is None:
            return None
        return JobContext(
            job_id=job.id,
            kind=job.kind,
            params=dict(job.params),
            attempt=job.attempts,
            worker_id=worker_id,
            sessions=sessions,
        )

    result: JobContext | None = in_transaction(sessions, take)
    return result


Outcome = Literal["succeeded", "failed", "cancelled", "released", "lost"]


def run(
    ctx: JobContext, *, heartbeat_seconds: float, on_interrupt: Literal["release", "cancel"] = "release"
) -> tuple[Outcome, dict[str, Any] | None, str | None]:
    """Run a claimed job's handler to its end and record that end: (outcome, result, error).

    A heartbeat thread keeps the claim alive through long silent steps (model loads, saves).
    Ctrl-C or SIGTERM gives the job back to the queue (a worker) or cancels it (a terminal run),
    then re-raises.
    """
    beating = threading.Event()
    beat = threading.Thread(target=_beat, args=(ctx, beating, heartbeat_seconds), daemon=True)
    beat.start()
    try:
        result = resolve(ctx.kind)(ctx)
    except jobs.JobCancelled:
        _finish(ctx, lambda s, j: jobs.mark_cancelled(session=s, job=j))
        return "cancelled", None, None
    except KeyboardInterrupt:
        if on_interrupt == "cancel":
            _finish(ctx, lambda s, j: jobs.mark_cancelled(session=s, job=j))
        else:
            reason = f"worker {ctx.worker_id} was stopped"
            log.warning("job %s: %s; giving it back to the queue", ctx.job_id, reason)
            _finish(ctx, lambda s, j: jobs.release(session=s, job=j, reason=reason))
        raise
    except JobLost as exc:
        log.warning("%s", exc)
        return "lost", None, str(exc)
    except Exception as exc:  # noqa: BLE001  (any failure of a handler is the job's failure)
        reason = f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s\n%s", ctx.job_id, reason, traceback.format_exc())
        _finish(ctx, lambda s, j: jobs.fail(session=s, job=j, error=reason))
        return "failed", None, reason
    finally:
        beating.set()
        beat.join()
    _finish(ctx, lambda s, j: jobs.complete(session=s, job=j, result=result))
    return "succeeded", result, None


def _finish(ctx: JobContext, action: Callable[[Session, Job], None]) -> None:
    def finish(s: Session) -> None:
        job = s.scalar(select(Job).where(Job.id == ctx.job_id).with_for_update())
        if job is None or job.worker_id != ctx.worker_id or job.status != JobStatus.running:
            log.warning("job %s is no longer ours; leaving it", ctx.job_id)
            return
        action(s, job)

    in_transaction(ctx.sessions, finish)


def _beat(ctx: JobContext, done: threading.Event, seconds: float) -> None:
    while not done.wait(seconds):
        try:
            if not in_transaction(
                ctx.sessions, lambda s: jobs.heartbeat(session=s, job_id=ctx.job_id, worker_id=ctx.worker_id)
            ):
                ctx.lost.set()
                return
        except Exception:  # noqa: BLE001  (a missed beat is retried at the next one)
            log.exception("heartbeat for job %s failed", ctx.job_id)


def promote_job(ctx: JobContext) -> dict[str, Any]:
    """The `promote` step of a round: make the new policy (and its reward model) active."""
    ctx.progress(0.0, "promoting the new policy")
    with ctx.session() as s:
        result = promote(session=s, params=dict(ctx.params), job_id=ctx.job_id)
    ctx.log(
        f"policy {result['policy_version_id']} is active"
        + (f"; reward model {result['reward_version_id']} is active" if "reward_version_id" in result else "")
        + (f"; tasks will mix it with policy {result['mixed_with']}" if result["mixed_with"] else "")
    )
    ctx.progress(1.0, f"policy {result['policy_version_id']} promoted")
    return result
