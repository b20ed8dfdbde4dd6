"""What the training jobs (reward model, SFT, PPO) share around their loops: the model version a
job registers, found again when a retried job registers it twice, and a loop run that survives a
retry and leaves nothing behind when cancelled."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.runs import service as jobs
from app.runs.models import ModelKind, ModelVersion
from trainer.loop import Hooks


def job_version(session: Session, *, job_id: int, kind: str, **fields: Any) -> ModelVersion:
    """The `kind` model version job `job_id` registered, or a new one with `fields` (a job
    claimed again after registering finds its own row instead of adding a second)."""
    mv = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id, ModelVersion.kind == kind))
    if mv is None:
        mv = ModelVersion(kind=kind, job_id=job_id, **fields)
        session.add(mv)
    return mv


@dataclass
class Trained:
    """What a training job made: the model `name`-jobID saved at out_dir by a loop configured by
    `cfg` (a dataclass), its metrics, and what its version records beside cfg's fields."""

    name: str
    cfg: Any
    out_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any]


def register_version(session: Session, ctx: Any, made: Trained, **fields: Any) -> ModelVersion:
    """The model version of job `ctx` for `made` (job_version's, with `fields`: found again on a
    retry), its config and metrics filled in."""
    name, out_dir = f"{made.name}-job{ctx.job_id}", str(made.out_dir)
    mv = job_version(session, job_id=ctx.job_id, name=name, path=out_dir, **fields)
    mv.config = {**asdict(made.cfg), **made.config}
    mv.metrics = made.metrics
    session.flush()
    return mv


def save_policy(ctx: Any, made: Trained, *, parent_id: int | None, summary: str) -> int:
    """Register a trained policy, child of `parent_id` and not active (a person, or a round's
    promote step, decides), and log it with `summary`: its version id."""
    with ctx.session() as s:
        fields = dict(source=str(made.out_dir), parent_id=parent_id, is_active=False)
        mv_id: int = register_version(s, ctx, made, kind=ModelKind.policy, **fields).id
    ctx.log(f"policy {mv_id} saved at {made.out_dir}: {summary}; promote it to use it")
    return mv_id


def job_hooks(ctx: Any, start: float = 0.02) -> Hooks:
    """A loop's reports into the job row: progress (which may cancel) after `start`, metrics, log."""
    return Hooks(
        progress=lambda f, m: ctx.progress(start + (1 - start) * f, m), metric=ctx.metric, log=ctx.log
    )


def train_once(
    ctx: Any, out_dir: Path, work_dir: Path, run: Callable[..., Any], *, what: str
) -> dict[str, Any]:
    """The metrics of `run(out_dir=, work_dir=, hooks=)` (a loop returning a result with
    `.metrics`, saved whole to out_dir/metrics.json), or those of a previous attempt that saved the
    model and died before registering it. Cancelled: out_dir and the checkpoints go, and
    JobCancelled goes on. Done: the checkpoints go."""
    try:
        if (out_dir / "metrics.json").exists():
            metrics: dict[str, Any] = json.loads((out_dir / "metrics.json").read_text())
        else:
            metrics = run(out_dir=out_dir, work_dir=work_dir, hooks=job_hooks(ctx)).metrics
    except jobs.JobCancelled:
        shutil.rmtree(work_dir, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        ctx.log(f"cancelled: no {what} was saved and the checkpoints are deleted")
        raise
    shutil.rmtree(work_dir, ignore_errors=True)
    return metrics
