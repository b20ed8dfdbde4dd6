"""`ranklab train ppo` and `ranklab round`. Imported at CLI start-up: no torch at the top."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from app.config import get_settings


@click.command("ppo")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME",
    help="Draw prompts from this prompt set (repeatable; default: every set not archived).",
)
@click.option("--iterations", type=int, help="Rollout+update iterations (paper: 500 × 512 episodes).")
@click.option("--beta", type=float, help="KL coefficient β per token (paper: 0.02).")
@click.option("--kl-target", type=float, help="Adapt β so the KL approaches this (default: fixed β).")
@click.option("--ptx-coef", type=float, help="PPO-ptx γ; 0 turns it off (paper: 27.8).")
@click.option(
    "--ptx-file",
    type=click.Path(exists=True, dir_okay=False),
    help='JSON Lines of {"text": ...} for PPO-ptx (default: the chosen completions).',
)
@click.option("--lr", "learning_rate", type=float, help="Policy learning rate (paper: 9.65e-6).")
@click.option("--value-lr", "value_learning_rate", type=float, help="Value network learning rate.")
@click.option("--batch-size", type=int, help="Episodes per iteration (paper: 512).")
@click.option("--mini-batch-size", type=int, help="Episodes per optimizer step (paper: 64).")
@click.option("--ppo-epochs", type=int, help="Passes over each batch (paper: 1).")
@click.option("--max-new-tokens", type=int, help="Response length cap.")
@click.option(
    "--reward-model",
    "reward_version_id",
    type=int,
    metavar="ID",
    help="Reward model version to use (default: the active one).",
)
@click.option("--seed", type=int, help="Prompt order, sampling and minibatch order.")
@click.option("--inline", is_flag=True, help="Run here with a progress bar; print one JSON summary line.")
def train_ppo(sets: tuple[str, ...], inline: bool, ptx_file: str | None, **knobs: Any) -> None:
    """Optimise the active policy against the active reward model with PPO (InstructGPT step 3).

    The result is a new policy version, not active until promoted
    (`ranklab policies promote ID`, or the Promote button on /models).

    \b
    Examples:
      ranklab train ppo --set round-1 --iterations 200 --beta 0.02      # a job for the worker
      ranklab train ppo --set round-1 --ptx-coef 27.8 --ptx-file pretrain.jsonl
      ranklab train ppo --iterations 20 --batch-size 32 --inline        # here, then one JSON line
    """
    from app.cli import sessions
    from app.runs import service as jobs

    params: dict[str, Any] = {"sets": list(sets)}
    params |= {k: v for k, v in knobs.items() if v is not None}
    if ptx_file:
        from pathlib import Path

        params["ptx_file"] = str(Path(ptx_file).resolve())
    maker = sessions()
    with maker.begin() as s:
        job_id = jobs.enqueue(
            session=s, kind="train_ppo", params=params, max_attempts=get_settings().job_max_attempts
        ).id
    if not inline:
        click.echo(
            f"queued job {job_id} (train_ppo); follow it at /runs/{job_id} or run `ranklab worker --burst`"
        )
        return
    from trainer.commands import run_inline

    result = run_inline(maker, job_id)
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


@click.command("round")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME",
    help="Resample this prompt set with the new policy (repeatable; default: every active set).",
)
@click.option("--mix", is_flag=True, help="Mix old- and new-policy completions in every new task.")
@click.option("--iterations", type=int, help="PPO iterations.")
@click.option("--beta", type=float, help="PPO's KL coefficient β.")
@click.option("--ptx-coef", type=float, help="PPO-ptx γ (0: off).")
def start_round(
    sets: tuple[str, ...], mix: bool, iterations: int | None, beta: float | None, ptx_coef: float | None
) -> None:
    """Queue the next round: reward model on all data → PPO → promote → resample the sets.

    One chain of jobs; a failed step stops the rest. Each resampled set is a fresh copy
    ("NAME · round N") so its tasks hold only the new completions.

    \b
    Examples:
      ranklab round --set round-1 --mix     # new tasks compare the new policy with the old
      ranklab round && ranklab worker --burst
    """
    from app.cli import sessions
    from app.runs.round_service import RoundError, enqueue_round

    ppo = {
        k: v for k, v in (("iterations", iterations), ("beta", beta), ("ptx_coef", ptx_coef)) if v is not None
    }
    with sessions().begin() as s:
        try:
            rnd = enqueue_round(
                session=s,
                sets=list(sets) or None,
                mix=mix,
                ppo_params=ppo,
                max_attempts=get_settings().job_max_attempts,
            )
        except RoundError as exc:
            raise click.ClickException(str(exc)) from exc
        lines = [
            f"  job {j.id:>5}  {j.kind}" + (f"  (after {j.after_id})" if j.after_id else "") for j in rnd.jobs
        ]
        names = [ps.name for ps in rnd.new_sets]
        first = rnd.reward_job.id
    click.echo("queued the round:")
    click.echo("\n".join(lines))
    click.echo(f"new tasks will go to: {', '.join(names)}")
    click.echo(f"follow it at /runs/{first}")


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def register(cli: click.Group, train: click.Group) -> None:
    train.add_command(train_ppo)
    cli.add_command(start_round)
