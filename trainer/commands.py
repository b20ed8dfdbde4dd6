"""Training commands: `ranklab train ...` (jobs, or --inline in this terminal) and
`ranklab reward ...` (use a trained reward model).

Imported by the CLI at start-up: keep torch imports inside the commands. Each command family is
its own click group, so the policy commands (train ppo, policies, round) sit beside these.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from app.config import get_settings


@click.group()
def train() -> None:
    """Train the reward model or the policy: enqueue a job for the worker, or run it here.

    \b
    Examples:
      ranklab train reward --set round-1 --inline
      ranklab train ppo --iterations 20 --inline
    """


@click.group()
def reward() -> None:
    """Use a trained reward model: evaluate it on a preference file.

    \b
    Example:
      ranklab reward eval --model active held-out.jsonl.gz
    """


def register(cli: click.Group) -> None:
    cli.add_command(train)
    cli.add_command(reward)
    from trainer import ppo_commands  # `ranklab train ppo` and `ranklab round`

    ppo_commands.register(cli, train)


# --- ranklab train reward -------------------------------------------------------------------


@train.command("reward")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME",
    help="Train on this prompt set's rankings (repeatable; default: every set).",
)
@click.option(
    "--min-labels",
    type=int,
    default=1,
    show_default=True,
    help="Only tasks ranked by at least this many labelers.",
)
@click.option(
    "--labeler",
    "labelers",
    multiple=True,
    metavar="USERNAME",
    help="Only this labeler's rankings (repeatable).",
)
@click.option(
    "--base-model", metavar="ID_OR_PATH", help="Backbone (hub id or folder). Default: the active policy's."
)
@click.option("--lr", type=float, help="Peak learning rate (AdamW, cosine decay to 10%).")
@click.option("--epochs", type=int, help="Passes over the data (default 1; more overfits).")
@click.option("--batch-size", type=int, help="Prompts per batch (each with all K completions).")
@click.option("--grad-accum", type=int, help="Batches per optimizer step.")
@click.option("--max-length", type=int, help="Tokens of prompt + completion (prompt cut first).")
@click.option("--inline", is_flag=True, help="Run here with a progress bar instead of queueing.")
def train_reward(
    sets: tuple[str, ...],
    min_labels: int,
    labelers: tuple[str, ...],
    base_model: str | None,
    lr: float | None,
    epochs: int | None,
    batch_size: int | None,
    grad_accum: int | None,
    max_length: int | None,
    inline: bool,
) -> None:
    """Train a reward model on the rankings in the database (InstructGPT's K-way loss).

    It becomes a reward model version; the first one is made active.

    \b
    Examples:
      ranklab train reward --set round-1 --lr 1e-5       # a job for `ranklab worker`
      ranklab train reward --base-model ./my-policy --epochs 1 --inline
    """
    from app.cli import sessions
    from app.runs import service as jobs

    params: dict[str, Any] = {"sets": list(sets), "min_labels": min_labels, "labelers": list(labelers)}
    for name, value in (
        ("base_model", base_model),
        ("lr", lr),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("grad_accum", grad_accum),
        ("max_length", max_length),
    ):
        if value is not None:
            params[name] = value
    maker = sessions()
    with maker.begin() as s:
        job = jobs.enqueue(
            session=s, kind="train_reward", params=params, max_attempts=get_settings().job_max_attempts
        )
        job_id = job.id
    if not inline:
        click.echo(
            f"queued job {job_id} (train_reward); follow it at /runs/{job_id} or run `ranklab worker --burst`"
        )
        return
    result = run_inline(maker, job_id)
    click.echo(
        f"reward model {result['model_version_id']} at {result['path']}"
        + (" (active)" if result.get("active") else "")
    )
    click.echo(f"validation accuracy: {result['metrics'].get('val_accuracy')}")


def run_inline(maker: Any, job_id: int) -> dict[str, Any]:
    """Claim this very job and run its handler here, with a tqdm bar; the job row records it."""
    import os
    import socket

    from sqlalchemy import update
    from tqdm import tqdm

    from app.db import utcnow
    from app.runs import service as jobs
    from app.runs.models import Job, JobStatus
    from trainer.worker import JobContext, resolve

    worker_id = f"inline:{socket.gethostname()}:{os.getpid()}"
    with maker.begin() as s:
        now = utcnow()
        taken = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(
                status=JobStatus.running,
                worker_id=worker_id,
                attempts=Job.attempts + 1,
                heartbeat_at=now,
                started_at=now,
                message="started",
            )
        ).rowcount
        if taken != 1:
            raise click.ClickException(f"job {job_id} was taken by a worker before this process")
        job = s.get(Job, job_id)
        ctx = JobContext(
            job_id=job_id,
            kind=job.kind,
            params=dict(job.params),
            attempt=job.attempts,
            worker_id=worker_id,
            sessions=maker,
        )
    bar = tqdm(total=1000, unit="‰", file=sys.stderr, dynamic_ncols=True)
    report = ctx.progress

    def progress(fraction: float, message: str = "") -> None:
        bar.n = int(1000 * fraction)
        bar.set_description(message[:60], refresh=True)
        report(fraction, message)

    ctx.progress = progress  # type: ignore[method-assign]
    stop = threading.Event()

    def beat() -> None:  # the model load and the last save can outlast the stale limit
        while not stop.wait(min(10.0, get_settings().job_stale_seconds / 4)):
            with maker.begin() as s:
                jobs.heartbeat(session=s, job_id=job_id, worker_id=worker_id)

    threading.Thread(target=beat, daemon=True).start()
    try:
        result = resolve(ctx.kind)(ctx)
    except (jobs.JobCancelled, KeyboardInterrupt) as exc:
        with maker.begin() as s:
            jobs.mark_cancelled(session=s, job=s.get(Job, job_id))
        raise click.ClickException(f"job {job_id} cancelled; no model was saved") from exc
    except Exception as exc:
        with maker.begin() as s:
            jobs.fail(session=s, job=s.get(Job, job_id), error=f"{type(exc).__name__}: {exc}")
        raise click.ClickException(f"job {job_id} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        stop.set()
        bar.close()
    with maker.begin() as s:
        jobs.complete(session=s, job=s.get(Job, job_id), result=result)
    return result or {}


# --- ranklab reward eval --------------------------------------------------------------------


@reward.command("eval")
@click.option(
    "--model",
    "model_ref",
    default="active",
    show_default=True,
    metavar="ID|active|PATH",
    help="A reward model version id, `active`, or a model folder.",
)
@click.option(
    "--max-length",
    type=int,
    default=512,
    show_default=True,
    help="Tokens of prompt + completion (prompt cut from the left).",
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Sequences per forward pass.")
@click.option("--limit", type=int, help="Only the first N rows of the file.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def reward_eval(model_ref: str, max_length: int, batch_size: int, limit: int | None, file: str) -> None:
    """Score a preference FILE (HH-RLHF, TRL or a ranklab rankings export) and print the
    pairwise accuracy: the share of comparisons the model orders as the labelers did.

    Invalid rows are skipped and counted. The last line is the accuracy.

    \b
    Examples:
      ranklab reward eval held-out.jsonl.gz
      ranklab reward eval --model 3 --limit 500 ../shared/data/hh-harmless-dev.jsonl.gz
    """
    from pathlib import Path

    from trainer.pref_files import read_preference_groups

    path = _model_path(model_ref)
    groups, skipped = read_preference_groups(Path(file))
    if limit is not None:
        groups = groups[:limit]
    if skipped:
        click.echo(f"skipped {skipped} invalid row(s)", err=True)
    if not groups:
        raise click.ClickException(f"{file} has no valid comparisons")
    correct, pairs = evaluate_file(path, groups, max_length=max_length, batch_size=batch_size)
    click.echo(f"model: {path}")
    click.echo(f"comparisons: {pairs}")
    click.echo(f"pairwise accuracy: {correct / pairs:.4f}")


def _model_path(ref: str) -> str:
    from pathlib import Path

    from sqlalchemy import select

    from app.cli import sessions
    from app.runs.models import ModelKind, ModelVersion

    if not ref.isdigit() and ref != "active":
        if Path(ref).is_dir():
            return ref
        raise click.BadParameter(
            f"{ref!r} is no model version id, 'active', or a folder", param_hint="--model"
        )
    with sessions()() as s:
        query = select(ModelVersion).where(ModelVersion.kind == ModelKind.reward)
        query = (
            query.where(ModelVersion.is_active.is_(True))
            if ref == "active"
            else query.where(ModelVersion.id == int(ref))
        )
        mv = s.scalar(query)
        if mv is None:
            what = "no reward model is active" if ref == "active" else f"no reward model {ref}"
            raise click.ClickException(f"{what}; list them at /models")
        if not mv.path:
            raise click.ClickException(f"reward model {mv.id} has no saved files")
        return mv.path


def evaluate_file(path: str, groups: list[Any], *, max_length: int, batch_size: int) -> tuple[float, int]:
    """(comparisons ordered right, comparisons) over the groups' untied pairs."""
    import torch

    from trainer.reward import load_reward_model, pair_correct, plan_pairs, score_texts

    model, tokenizer = load_reward_model(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    correct, pairs = 0.0, 0
    chunk = max(1, batch_size // 2)
    for start in range(0, len(groups), chunk):
        part = groups[start : start + chunk]
        scores = torch.tensor(
            score_texts(
                model,
                tokenizer,
                [g.prompt for g in part for _ in g.completions],
                [c for g in part for c in g.completions],
                max_length=max_length,
                batch_size=batch_size,
                normalized=False,
                device=device,
            )
        )
        right, n = pair_correct(scores, plan_pairs(part))
        correct += right
        pairs += n
    return correct, pairs
