"""`ranklab jobs list|cancel` and `ranklab policies list|promote`: the dashboard from a terminal."""

from __future__ import annotations

import json

import click

from app.commands import group
from app.db import cli_sessions
from app.errors import DomainError
from app.runs import dashboard
from app.runs import models_service as registry
from app.runs.models import JobStatus, ModelKind


def _short_metrics(metrics: dict[str, object], limit: int = 4) -> str:
    parts = []
    for name, value in list(metrics.items())[:limit]:
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    more = len(metrics) - limit
    return " ".join(parts) + (f" (+{more} more)" if more > 0 else "") if parts else "-"


@click.command("list")
@click.option("--kind", help="Only jobs of this kind, e.g. sample, train_reward, train_ppo.")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), help="Only this status.")
@click.option("--limit", default=30, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def jobs_list(kind: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Show jobs, newest first, with status, progress and message.

    \b
    Examples:
      ranklab jobs list
      ranklab jobs list --status running
      ranklab jobs list --kind train_ppo --limit 5 --json
    """
    with cli_sessions()() as s:
        rows = dashboard.list_runs(session=s, kind=kind, status=status, limit=limit)
        if as_json:
            for r in rows:
                j = r.job
                click.echo(
                    json.dumps(
                        {
                            "id": j.id,
                            "kind": j.kind,
                            "status": j.status,
                            "progress": j.progress,
                            "message": j.message,
                            "after_id": j.after_id,
                            "created_by": r.who,
                            "created_at": j.created_at.isoformat(),
                            "error": j.error,
                        }
                    )
                )
            return
        if not rows:
            click.echo("no jobs" + (" match" if kind or status else ""))
            return
        click.echo(f"{'id':>5}  {'kind':<14} {'status':<10} {'done':>5}  {'took':>12}  message")
        for r in rows:
            j = r.job
            left = f" ({dashboard.human(r.time_left)} left)" if r.time_left else ""
            click.echo(
                f"{j.id:>5}  {j.kind:<14} {j.status:<10} {j.progress:>5.0%}  "
                f"{dashboard.human(r.duration):>12}  {j.message}{left}"
            )
            if j.error:
                click.echo(f"{'':>7}error: {j.error.splitlines()[0] if j.error else ''}")


@click.command("cancel")
@click.argument("job_id", type=int)
def jobs_cancel(job_id: int) -> None:
    """Cancel job JOB_ID: a queued job at once, a running one at its next step.

    \b
    Example:
      ranklab jobs cancel 12
    """
    with cli_sessions().begin() as s:
        job = dashboard.get_job(session=s, job_id=job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id} (see `ranklab jobs list`)")
        if not dashboard.cancel(session=s, job=job):
            raise click.ClickException(f"job {job_id} already {job.status}; nothing to cancel")
        if job.status == JobStatus.cancelled:
            click.echo(f"job {job_id} ({job.kind}) cancelled")
        else:
            click.echo(f"job {job_id} ({job.kind}) will stop at its next step")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def policies_list(as_json: bool) -> None:
    """Show every policy version with its parent, the run that made it, and its metrics.

    \b
    Examples:
      ranklab policies list
      ranklab policies list --json | jq .metrics
    """
    with cli_sessions()() as s:
        models = registry.list_models(session=s, kind=ModelKind.policy)
        if as_json:
            for m in models:
                click.echo(
                    json.dumps(
                        {
                            "id": m.id,
                            "name": m.name,
                            "parent_id": m.parent_id,
                            "job_id": m.job_id,
                            "source": m.source,
                            "active": m.is_active,
                            "demo": m.is_demo,
                            "metrics": m.metrics,
                            "created_at": m.created_at.isoformat(),
                        }
                    )
                )
            return
        if not models:
            click.echo("no policy versions yet (the base policy is registered on first sampling)")
            return
        click.echo(f"{'id':>4}  {'':<6} {'name':<28} {'parent':>6} {'job':>5}  metrics")
        for m in models:
            flag = "active" if m.is_active else ""
            name = m.name + (" [demo]" if m.is_demo else "")
            click.echo(
                f"{m.id:>4}  {flag:<6} {name:<28} {m.parent_id or '-':>6} {m.job_id or '-':>5}  "
                f"{_short_metrics(m.metrics or {})}"
            )


@click.command("promote")
@click.argument("model_id", type=int)
def policies_promote(model_id: int) -> None:
    """Make policy MODEL_ID the active one: it samples new prompt sets and starts the next PPO run.

    \b
    Example:
      ranklab policies list          # find the id of the new version
      ranklab policies promote 7
    """
    with cli_sessions().begin() as s:
        try:
            model = registry.promote_policy(session=s, model=registry.get_model(session=s, model_id=model_id))
        except DomainError as exc:  # no such model, or not a policy
            raise click.ClickException(str(exc)) from exc
        click.echo(f"policy {model.id} ({model.name}) is now active")


jobs = group(
    "jobs",
    "Look at and cancel sampling and training jobs.",
    "ranklab jobs list --status running",
    "ranklab jobs cancel 12",
)
jobs.add_command(jobs_list)
jobs.add_command(jobs_cancel)
policies = group(
    "policies",
    "Policy versions: list them, promote one to active.",
    "ranklab policies list",
    "ranklab policies promote 7",
)
policies.add_command(policies_list)
policies.add_command(policies_promote)

COMMANDS = (jobs, policies)  # what app/cli.py adds to `ranklab`
