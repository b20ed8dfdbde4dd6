"""Trainer code run in this process: the one place where `app` reaches into `trainer`.

`ranklab worker`, every `--inline` flag, `ranklab demo` and `ranklab reward eval` come through
here. Each import of `trainer` sits inside its function, so `import app.cli` and the web
process load neither torch nor any trainer module.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

if TYPE_CHECKING:
    from trainer.worker import Worker


class InlineRunError(RuntimeError):
    """A job run in this terminal did not succeed; the message says how it ended."""


def make_worker(maker: sessionmaker[Session], **options: Any) -> Worker:
    """A queue worker (`ranklab worker`); options as trainer.worker.Worker takes them."""
    from trainer.worker import Worker

    return Worker(maker, **options)


def heartbeat_seconds() -> float:
    return min(10.0, get_settings().job_stale_seconds / 4)


def run_job_here(maker: sessionmaker[Session], job_id: int, *, label: str = "") -> dict[str, Any]:
    """Claim queued job `job_id` and run it in this process with a progress bar on stderr.

    It is the worker's own path (trainer.runner): the job row records the run, the run page
    follows it live, and Ctrl-C cancels it. Raises InlineRunError unless it succeeds.
    """
    from tqdm import tqdm

    from trainer import runner

    worker_id = f"inline:{socket.gethostname()}:{os.getpid()}"
    ctx = runner.claim(maker, worker_id=worker_id, job_id=job_id)
    if ctx is None:
        raise InlineRunError(f"job {job_id} was taken by a worker before this process")
    bar = tqdm(total=1000, unit="‰", file=sys.stderr, dynamic_ncols=True, desc=label or None)
    report = ctx.progress

    def progress(fraction: float, message: str = "") -> None:
        bar.n = int(1000 * fraction)
        bar.set_description(message[:60], refresh=True)
        report(fraction, message)

    ctx.progress = progress  # type: ignore[method-assign]
    try:
        outcome, result, error = runner.run(ctx, heartbeat_seconds=heartbeat_seconds(), on_interrupt="cancel")
    except KeyboardInterrupt as exc:
        raise InlineRunError(f"job {job_id} cancelled; nothing was saved") from exc
    finally:
        bar.close()
    if outcome == "cancelled":
        raise InlineRunError(f"job {job_id} cancelled; nothing was saved")
    if outcome != "succeeded":
        raise InlineRunError(f"job {job_id} {outcome}: {error}")
    return result or {}


def ensure_default_model(artifacts_dir: Path) -> Path:
    """The default policy's folder, converted from its wheel on first use with a progress bar on
    stderr. InlineRunError, saying what to install or to set RANKLAB_POLICY_MODEL, if it cannot be."""
    from trainer.models.smollm2 import DefaultModelMissing, ensure_default_model_with_bar

    try:
        return ensure_default_model_with_bar(artifacts_dir)
    except DefaultModelMissing as exc:
        raise InlineRunError(str(exc)) from exc


def build_demo_policy(path: Path, *, say: Any) -> None:
    """The tiny demo policy (`ranklab demo --tiny`, the test suite)."""
    from trainer.models.demo import ensure_demo_policy

    ensure_demo_policy(path, say=say)


def evaluate_reward_file(
    model_path: str, file: Path, *, max_length: int, batch_size: int, limit: int | None
) -> tuple[float, int, int]:
    """(comparisons ordered right, comparisons, rows skipped) of a reward model on a preference file."""
    from trainer.reward.eval import evaluate_file

    return evaluate_file(model_path, file, max_length=max_length, batch_size=batch_size, limit=limit)
