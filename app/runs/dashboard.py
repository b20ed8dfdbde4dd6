"""Queries and small calculations behind the runs pages and the jobs API. No HTTP here.

The job queue itself (enqueue, claim, cancel, metrics) is app.runs.service; this module only
reads it and shapes what the dashboard shows: durations, time left, chains, metric groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import utcnow, where_given
from app.prompts.models import PromptSet
from app.runs import service as jobs
from app.runs.models import FINISHED, Job, JobStatus, ModelVersion

ACTIVE = (JobStatus.queued, JobStatus.running)
LOG_TAIL_LINES = 80

# Metric leaf names (after the last "/") drawn together on one chart, whatever their prefix:
# train/loss and val/loss share an axis; val/accuracy gets its own. Names not listed here are
# grouped by their prefix ("val/x" with "val/y"), and names without one get a chart each.
METRIC_GROUPS: dict[str, str] = {
    "loss": "Loss",
    "train_loss": "Loss",
    "val_loss": "Loss",
    "eval_loss": "Loss",
    "accuracy": "Accuracy",
    "acc": "Accuracy",
    "val_accuracy": "Accuracy",
    "train_accuracy": "Accuracy",
    "pairwise_accuracy": "Accuracy",
    "lr": "Learning rate",
    "learning_rate": "Learning rate",
    "reward": "Mean reward",
    "mean_reward": "Mean reward",
    "reward_mean": "Mean reward",
    "score": "Mean reward",
    "rm_score": "Mean reward",
    "kl": "KL to the reference",
    "mean_kl": "KL to the reference",
    "kl_ref": "KL to the reference",
    "beta": "KL coefficient β",
    "kl_coef": "KL coefficient β",
    "entropy": "Entropy",
    "clip_frac": "Clip fraction",
    "clipfrac": "Clip fraction",
    "clip_fraction": "Clip fraction",
    "policy_clipfrac": "Clip fraction",
    "value_clipfrac": "Clip fraction",
    "value_clip_frac": "Clip fraction",
    "policy_clip_frac": "Clip fraction",
    "approx_kl": "Approximate KL (old → new)",
    "approxkl": "Approximate KL (old → new)",
    "value_loss": "Value loss",
    "vf_loss": "Value loss",
    "policy_loss": "Policy loss",
    "pg_loss": "Policy loss",
    "explained_variance": "Explained variance",
    "explained_var": "Explained variance",
    "ptx_loss": "Pretraining (ptx) loss",
    "lm_loss": "Pretraining (ptx) loss",
    "response_length": "Response length",
    "mean_response_length": "Response length",
    "length": "Response length",
    "no_eos": "Share without EOS",
    "no_eos_share": "Share without EOS",
    "no_eos_frac": "Share without EOS",
    "frac_no_eos": "Share without EOS",
    "grad_norm": "Gradient norm",
    "time_generate": "Seconds per iteration",
    "time_score": "Seconds per iteration",
    "time_update": "Seconds per iteration",
    "tokens_per_second": "Throughput",
    "pairs_per_second": "Throughput",
    "completions_per_second": "Throughput",
}


@dataclass
class JobRow:
    """One job as the dashboard shows it."""

    job: Job
    who: str | None
    duration: timedelta | None
    time_left: timedelta | None

    @property
    def is_active(self) -> bool:
        return self.job.status in ACTIVE


def time_left(job: Job, now: datetime | None = None) -> timedelta | None:
    """Linear estimate from the time since it started and the fraction done; None if unknown."""
    if job.status != JobStatus.running or job.started_at is None:
        return None
    if not 0.0 < job.progress < 1.0:
        return None
    elapsed = ((now or utcnow()) - job.started_at).total_seconds()
    return timedelta(seconds=max(0.0, elapsed * (1.0 - job.progress) / job.progress))


def duration(job: Job, now: datetime | None = None) -> timedelta | None:
    if job.started_at is None:
        return None
    end = job.finished_at or (now or utcnow())
    return max(timedelta(0), end - job.started_at)


def human(delta: timedelta | None) -> str:
    """3 s, 4 min 05 s, 2 h 07 min."""
    if delta is None:
        return "–"
    s = int(round(delta.total_seconds()))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def list_runs(
    *, session: Session, kind: str | None = None, status: str | None = None, limit: int = 100
) -> list[JobRow]:
    query = select(Job, User.username).outerjoin(User, User.id == Job.created_by_id)
    query = where_given(query, (Job.kind, kind), (Job.status, status))
    now = utcnow()
    return [
        JobRow(job=job, who=who, duration=duration(job, now), time_left=time_left(job, now))
        for job, who in session.execute(query.order_by(Job.id.desc()).limit(limit))
    ]


def row(*, session: Session, job: Job) -> JobRow:
    who = (
        session.scalar(select(User.username).where(User.id == job.created_by_id))
        if job.created_by_id
        else None
    )
    now = utcnow()
    return JobRow(job=job, who=who, duration=duration(job, now), time_left=time_left(job, now))


def kinds(*, session: Session) -> list[str]:
    return list(session.scalars(select(Job.kind).distinct().order_by(Job.kind)))


def chain(*, session: Session, job: Job) -> list[Job]:
    """Every job linked to this one by after_id, first step first; [] when it stands alone."""
    steps = [job]
    seen = {job.id}
    prev = job
    while prev.after_id is not None and prev.after_id not in seen:
        found = session.get(Job, prev.after_id)
        if found is None:
            break
        steps.insert(0, found)
        seen.add(found.id)
        prev = found
    tip = job
    while True:
        nxt = session.scalar(select(Job).where(Job.after_id == tip.id).order_by(Job.id).limit(1))
        if nxt is None or nxt.id in seen:
            break
        steps.append(nxt)
        seen.add(nxt.id)
        tip = nxt
    return steps if len(steps) > 1 else []


def group_metrics(series: dict[str, list[tuple[int, float]]]) -> list[tuple[str, dict[str, Any]]]:
    """name -> points, regrouped as [(chart title, {name: points})], known groups first."""
    groups: dict[str, dict[str, Any]] = {}
    for name, points in series.items():
        prefix, _, leaf = name.rpartition("/")
        title = METRIC_GROUPS.get(leaf.lower()) or (prefix if prefix else name)
        groups.setdefault(title, {})[name] = points
    order = {title: i for i, title in enumerate(dict.fromkeys(METRIC_GROUPS.values()))}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def log_tail(job: Job, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join((job.log or "").rstrip("\n").splitlines()[-lines:])


def samples(job: Job) -> list[dict[str, Any]]:
    """The sample table a job published in result["samples"] (see docs/runs.md), made safe to show.

    Rows lacking fields are kept with blanks rather than hidden: a malformed table is still
    evidence of what the run did.
    """
    raw = (job.result or {}).get("samples") if isinstance(job.result, dict) else None
    if not isinstance(raw, list):
        return []
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        score = item.get("score")
        out.append(
            {
                "step": item.get("step", item.get("iteration")),
                "prompt": str(item.get("prompt", "")),
                "response": str(item.get("response", item.get("completion", ""))),
                "score": score if isinstance(score, int | float) else None,
            }
        )
    return out


def samples_from_demo(job: Job) -> bool:
    """Whether the job says its samples come from the demo policy or a policy trained from it."""
    return isinstance(job.result, dict) and bool(job.result.get("from_demo"))


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def result_without_samples(job: Job) -> dict[str, Any] | None:
    if not isinstance(job.result, dict):
        return job.result
    return {k: v for k, v in job.result.items() if k != "samples"}


@dataclass
class TrainingData:
    """What a training job says it trained on: the export manifest it cites (result["data"])."""

    filters: list[tuple[str, str]]  # the filters that select something (defaults left out)
    counts: dict[str, Any]
    sha256: str
    fmt: str


def training_data(*, session: Session, job: Job) -> TrainingData | None:
    """The export manifest in a job's result["data"] (train_reward writes it), for the run
    page's "trained on"; prompt sets and policies by name."""
    data = job.result.get("data") if isinstance(job.result, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("filters"), dict):
        return None
    f = data["filters"]
    names = {
        "prompt_set_ids": dict(session.execute(select(PromptSet.id, PromptSet.name)).all()),
        "policy_version_ids": dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all()),
    }
    shown: list[tuple[str, str]] = []
    for key, value in f.items():
        if key in names and value:
            shown.append(
                (key.removesuffix("_ids"), ", ".join(f"{names[key].get(i, '?')} (#{i})" for i in value))
            )
        elif key == "labeler_ids" and value:
            shown.append(("labelers", ", ".join(f"#{i}" for i in value)))
        elif key in ("split_seed", "split_fractions"):
            continue  # shown with the split
        elif value not in (None, False, 0, [], ""):
            shown.append((key, str(value)))
    fractions = f.get("split_fractions") or []
    shown.append(
        ("split", f"seed {f.get('split_seed', 0)}, train/validation/test {'/'.join(map(str, fractions))}")
    )
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    return TrainingData(
        filters=shown,
        counts=counts or {},
        sha256=str(data.get("sha256") or ""),
        fmt=str(data.get("format") or ""),
    )


def get_job(*, session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def cancel(*, session: Session, job: Job) -> bool:
    """Ask the job to stop; False when it had already finished (nothing to cancel)."""
    if job.status in FINISHED:
        return False
    jobs.request_cancel(session=session, job=job)
    return True


def is_any_active(rows: list[JobRow]) -> bool:
    return any(r.is_active for r in rows)
