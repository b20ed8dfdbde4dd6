"""`ranklab guidelines set|show` and `ranklab labeling status`."""

from __future__ import annotations

import sys
from typing import IO

import click
from sqlalchemy import func, select

from app.commands import group
from app.db import cli_sessions

guidelines = group(
    "guidelines",
    "The labeling guidelines (markdown, versioned; every annotation records its version).",
    "ranklab guidelines set guidelines.md",
    "ranklab guidelines show",
)


@guidelines.command("set")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--by", "username", help="Record this admin as the author.")
def guidelines_set(file: IO[str], username: str | None) -> None:
    """Save FILE (markdown; `-` reads stdin) as the next version.

    \b
    Example:
      ranklab guidelines set docs/my-guidelines.md --by alice
    """
    from app.auth import service as auth
    from app.labeling import guidelines as texts
    from app.labeling import service as labeling

    body = file.read()
    with cli_sessions()() as s:
        user = auth.get_user(session=s, username=username) if username else None
        if username and user is None:
            raise click.ClickException(f"no user named {username!r}")
        try:
            g = texts.save_guideline(session=s, body=body, user=user)
        except labeling.SubmissionInvalid as e:
            raise click.ClickException(e.message) from None
        s.commit()
        click.echo(f"saved guidelines v{g.version} ({len(g.body)} characters)")


@guidelines.command("show")
@click.option("--version", type=int, help="An older version (default: the latest).")
def guidelines_show(version: int | None) -> None:
    """Print the guidelines' markdown.

    \b
    Examples:
      ranklab guidelines show
      ranklab guidelines show --version 2 > guidelines-v2.md
    """
    from app.labeling import guidelines as texts

    with cli_sessions()() as s:
        versions = texts.list_guidelines(session=s)
        shown = (
            next((g for g in versions if g.version == version), None)
            if version
            else (versions[0] if versions else None)
        )
        if shown is None:
            raise click.ClickException(
                "no such guidelines version" if version else "no guidelines yet: ranklab guidelines set FILE"
            )
        click.echo(f"# v{shown.version}, {shown.created_at:%Y-%m-%d %H:%M}", err=True)
        sys.stdout.write(shown.body.rstrip("\n") + "\n")


labeling_group = group("labeling", "How far labeling has got.", "ranklab labeling status")


@labeling_group.command("status")
def labeling_status() -> None:
    """Tasks open and closed, live assignments, annotations and skips, per prompt set.

    \b
    Example:
      ranklab labeling status
    """
    from app.db import utcnow
    from app.labeling.models import Annotation, Assignment, AssignmentState, Task
    from app.prompts.models import PromptSet

    now = utcnow()
    with cli_sessions()() as s:
        sets = s.scalars(select(PromptSet).order_by(PromptSet.id)).all()
        if not sets:
            click.echo("no prompt sets yet")
            return
        click.echo(
            f"{'set':<32} {'status':<9} {'open':>6} {'closed':>7} {'leased':>7} {'labels':>7} {'skips':>6}"
        )
        for ps in sets:
            tasks = dict(
                s.execute(
                    select(Task.status, func.count()).where(Task.prompt_set_id == ps.id).group_by(Task.status)
                ).all()
            )
            leased = s.scalar(
                select(func.count())
                .select_from(Assignment)
                .join(Task)
                .where(
                    Task.prompt_set_id == ps.id,
                    Assignment.state == AssignmentState.active,
                    Assignment.lease_expires_at > now,
                )
            )
            labels, skips = s.execute(
                select(
                    func.count(Annotation.id).filter(Annotation.skip_reason.is_(None)),
                    func.count(Annotation.id).filter(Annotation.skip_reason.is_not(None)),
                )
                .join(Task, Task.id == Annotation.task_id)
                .where(Task.prompt_set_id == ps.id)
            ).one()
            click.echo(
                f"{ps.name[:32]:<32} {ps.status:<9} {tasks.get('open', 0):>6} "
                f"{tasks.get('closed', 0):>7} {leased or 0:>7} {labels:>7} {skips:>6}"
            )


COMMANDS = (
    guidelines,
    labeling_group,
)  # what app/cli.py adds to `ranklab`
