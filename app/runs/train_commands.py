"""`ranklab train reward|ppo`, `ranklab round` and `ranklab reward eval`.

The train commands queue a job for `ranklab worker`; with --inline they run it in this terminal
through app.runs.inline (the worker's own runner). Imported at CLI start-up: no torch here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from app.commands import group
from app.config import get_settings
from app.runs import inline
from app.runs import service as jobs
from app.runs.params import ROUND, TRAIN_PPO, TRAIN_REWARD, TRAIN_SFT, click_options, from_cli

train = group(
    "train",
    "Train the reward model or the policy: enqueue a job for the worker, or run it here.",
    "ranklab train reward --set round-1 --inline",
    "ranklab train ppo --iterations 20 --inline",
    "ranklab train sft --set demos --epochs 1 --inline",
)


reward = group(
    "reward",
    "Use a trained reward model: evaluate it on a preference file.",
    "ranklab reward eval --model active held-out.jsonl.gz",
)


def _queue_or_run(
    kind: str, params: dict[str, Any], *, inline: bool, checked: bool = False
) -> tuple[int, Any]:
    """Queue a `kind` job (`checked`: against the database as the form is, a refusal naming
    the option); with `inline` run it here: (job id, its result); else say how to follow it:
    (job id, None)."""
    from app.cli import sessions
    from app.runs import launch_service
    from app.runs.params import ParamsError

    maker = sessions()
    with maker.begin() as s:
        try:
            if checked:
                job = launch_service.start(
                    session=s,
                    kind=kind,
                    params=params,
                    created_by_id=None,
                    max_attempts=get_settings().job_max_attempts,
                )
            else:
                job = jobs.enqueue(
                    session=s, kind=kind, params=params, max_attempts=get_settings().job_max_attempts
                )
        except ParamsError as exc:
            raise click.UsageError("; ".join(exc.errors)) from exc
        job_id = job.id
    if not inline:
        click.echo(
            f"queued job {job_id} ({kind}); follow it at /runs/{job_id} or run `ranklab worker --burst`"
        )
        return job_id, None
    return job_id, _run_here(maker, job_id)


def _run_here(maker: Any, job_id: int) -> dict[str, Any]:
    try:
        return inline.run_job_here(maker, job_id)
    except inline.InlineRunError as exc:
        raise click.ClickException(str(exc)) from exc


# --- ranklab train reward -------------------------------------------------------------------


@train.command("reward")
@click_options(TRAIN_REWARD)
@click.option("--inline", is_flag=True, help="Run here with a progress bar instead of queueing.")
def train_reward(inline: bool, **options: Any) -> None:
    """Train a reward model on the rankings in the database (InstructGPT's K-way loss).

    It becomes a reward model version; the first one is made active. Every option's default is
    the one in app/runs/params (the form and the API share it).

    \b
    Examples:
      ranklab train reward --set round-1 --lr 1e-5       # a job for `ranklab worker`
      ranklab train reward --base-model ./my-policy --epochs 1 --inline
    """
    _, result = _queue_or_run("train_reward", from_cli(TRAIN_REWARD, options), inline=inline)
    if result is None:
        return
    click.echo(
        f"reward model {result['model_version_id']} at {result['path']}"
        + (" (active)" if result.get("active") else "")
    )
    click.echo(f"validation accuracy: {result['metrics'].get('val_accuracy')}")
    if result["metrics"].get("not_active_because"):
        click.echo(result["metrics"]["not_active_because"])


@train.command("ppo")
@click_options(TRAIN_PPO, skip=("ptx_file",))
@click.option(
    "--ptx-file",
    type=click.Path(exists=True, dir_okay=False),
    help=TRAIN_PPO["ptx_file"].help,
)
@click.option("--inline", is_flag=True, help="Run here with a progress bar; print one JSON summary line.")
def train_ppo(inline: bool, ptx_file: str | None, **options: Any) -> None:
    """Optimise the active policy against the active reward model with PPO (InstructGPT step 3).

    The result is a new policy version, not active until promoted
    (`ranklab policies promote ID`, or the Promote button on /models).

    \b
    Examples:
      ranklab train ppo --set round-1 --iterations 200 --beta 0.02      # a job for the worker
      ranklab train ppo --set round-1 --ptx-coef 27.8 --ptx-file pretrain.jsonl
      ranklab train ppo --iterations 20 --batch-size 32 --inline        # here, then one JSON line
    """
    params = from_cli(TRAIN_PPO, options)
    if ptx_file:
        params["ptx_file"] = str(Path(ptx_file).resolve())
    job_id, result = _queue_or_run("train_ppo", params, inline=inline)
    if result is None:
        return
    metrics = result.get("metrics", {})
    click.echo(
        json.dumps(
            _finite(
                {
                    "job_id": job_id,
                    "policy_version_id": result.get("model_version_id"),
                    "path": result.get("path"),
                    "iterations": metrics.get("iterations"),
                    "first_mean_reward": metrics.get("first_mean_reward"),
                    "last_mean_reward": metrics.get("mean_reward"),
                    "last_kl": metrics.get("kl"),
                    "beta": metrics.get("beta"),
                    "reward_version_id": result.get("reward_version_id"),
                    "parent_id": result.get("parent_id"),
                    "active": False,
                }
            )
        )
    )


@train.command("sft")
@click_options(TRAIN_SFT)
@click.option("--inline", is_flag=True, help="Run here with a progress bar; print one JSON summary line.")
def train_sft(inline: bool, **options: Any) -> None:
    """Fine-tune the active policy (or --base) on the demonstrations that count (InstructGPT step 1).

    The data is `ranklab export sft` with the same --set (same records, same manifest sha256):
    the train split is learned, the validation split measured before the first step and after
    the last. The result is a new policy version, not active until promoted
    (`ranklab policies promote ID`, or the Promote button on /models).

    \b
    Examples:
      ranklab train sft --set demos                         # a job for `ranklab worker`
      ranklab train sft --set demos --epochs 1 --inline     # here, then one JSON line
      ranklab train sft --base 3 --epochs 16 --dropout 0.2  # from policy version 3
    """
    job_id, result = _queue_or_run("train_sft", from_cli(TRAIN_SFT, options), inline=inline, checked=True)
    if result is None:
        return
    metrics = result.get("metrics", {})
    line = {"job_id": job_id}
    line |= {
        k: result.get(k) for k in ("policy_version", "path", "parent_id", "val_loss_first", "val_loss_last")
    }
    line |= {k: metrics.get(k) for k in ("train_demonstrations", "val_demonstrations", "steps", "seconds")}
    line |= {"kept_epoch": metrics.get("kept_epoch"), "data_sha256": result.get("data", {}).get("sha256")}
    click.echo(json.dumps(_finite({**line, "active": False})))


@click.command("round")
@click_options(ROUND)
def start_round(**options: Any) -> None:
    """Queue the next round: reward model on all data → PPO → promote → resample the sets.

    With --sft and demonstrations newer than the last SFT policy, SFT on them comes first, and
    PPO starts from (and is held near) that SFT policy.

    One chain of jobs; a failed step stops the rest. Each resampled set is a fresh copy
    ("NAME · round N") so its tasks hold only the new completions.

    \b
    Examples:
      ranklab round --set round-1 --mix     # new tasks compare the new policy with the old
      ranklab round --sft                   # SFT on new demonstrations → RM → PPO → ...
      ranklab round && ranklab worker --burst
    """
    from app.cli import sessions
    from app.runs.round_service import RoundError, enqueue_round

    params = from_cli(ROUND, options)
    sets, mix = params.pop("sets", []), bool(params.pop("mix", False))
    sft = bool(params.pop("sft", False))
    ppo = params  # the rest are PPO's knobs
    with sessions().begin() as s:
        try:
            rnd = enqueue_round(
                session=s,
                sets=sets or None,
                mix=mix,
                ppo_params=ppo,
                max_attempts=get_settings().job_max_attempts,
                sft=sft,
            )
        except RoundError as exc:
            raise click.ClickException(str(exc)) from exc
        lines = [
            f"  job {j.id:>5}  {j.kind}" + (f"  (after {j.after_id})" if j.after_id else "") for j in rnd.jobs
        ]
        names = [ps.name for ps in rnd.new_sets]
        first = rnd.jobs[0].id
    click.echo("queued the round:")
    click.echo("\n".join(lines))
    click.echo(f"new tasks will go to: {', '.join(names)}")
    click.echo(f"follow it at /runs/{first}")


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


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
    path = _model_path(model_ref)
    try:
        correct, pairs, skipped = inline.evaluate_reward_file(
            path, Path(file), max_length=max_length, batch_size=batch_size, limit=limit
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if skipped:
        click.echo(f"skipped {skipped} invalid row(s)", err=True)
    click.echo(f"model: {path}")
    click.echo(f"comparisons: {pairs}")
    click.echo(f"pairwise accuracy: {correct / pairs:.4f}")


def _model_path(ref: str) -> str:
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


COMMANDS = (
    train,
    reward,
    start_round,
)  # what app/cli.py adds to `ranklab`
