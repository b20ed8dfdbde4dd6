"""Job handlers for the queue tests.

In-process workers get them through `trainer.runner.register`; worker subprocesses
(`python -m app.cli worker`) through RANKLAB_EXTRA_HANDLERS="kind=tests.runs.handlers:func".
Each run appends a line to the file named by params["record"], so a test can count how many
times each job really ran, across threads and processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from trainer.runner import JobContext


def _record(ctx: JobContext, what: str) -> None:
    path = ctx.params.get("record")
    if path:
        # One short O_APPEND write per line: lines from several processes never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.job_id} {ctx.attempt} {ctx.worker_id} {what}\n".encode())
        finally:
            os.close(fd)


def record(ctx: JobContext) -> dict[str, Any]:
    """Runs once, a little slowly so that workers overlap, and says who ran it."""
    _record(ctx, "ran")
    time.sleep(float(ctx.params.get("sleep", 0.0)))
    return {"worker": ctx.worker_id}


def slow(ctx: JobContext) -> dict[str, Any]:
    """On its first attempt with hang_first, reports progress forever (until killed);
    otherwise a few steps, then done."""
    _record(ctx, "started")
    if ctx.params.get("hang_first") and ctx.attempt == 1:
        for i in range(10_000):
            ctx.progress(min(0.5, i / 100), f"step {i}")
            time.sleep(0.05)
    for i in range(3):
        ctx.progress(i / 3, f"step {i}")
        ctx.metric(i, loss=1.0 / (i + 1))
    _record(ctx, "finished")
    return {"attempt": ctx.attempt}


def steps(ctx: JobContext) -> dict[str, Any]:
    """Reports `n` steps; asks for its own cancel at step `cancel_at` (what a user's click does)."""
    from app.runs import service as jobs
    from app.runs.models import Job

    n = int(ctx.params.get("n", 3))
    for i in range(n):
        if ctx.params.get("cancel_at") == i:
            with ctx.session() as s:
                job = s.get(Job, ctx.job_id)
                assert job is not None
                jobs.request_cancel(session=s, job=job)
        ctx.progress((i + 1) / n, f"step {i + 1} of {n}")
        ctx.metric(i, loss=1.0 / (i + 1), reward=float(i))
        _record(ctx, f"step {i}")
    return {"steps": n}


def boom(ctx: JobContext) -> None:
    raise RuntimeError("the handler broke on purpose")
