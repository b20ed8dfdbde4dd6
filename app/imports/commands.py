"""`ranklab preferences import` and `ranklab demonstrations import` FILE --name NAME."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from app.commands import group, input_file
from app.imports.demonstrations import KINDS as DEMO_KINDS
from app.imports.parsing import KINDS

F = TypeVar("F", bound=Callable[..., Any])


def _run_import(file: Path, importer: Callable[..., Any], **options: Any) -> tuple[Any, int, int]:
    """Run `importer` on FILE in one transaction: (its result, the new set's id and K). A
    refusal lists each bad row (file, line, field) on stderr and stores nothing."""
    from app.cli import sessions
    from app.imports.service import ImportRefused
    from app.imports.upload import Upload

    try:
        with sessions().begin() as s:
            result = importer(s, Upload(file.read_bytes(), file.name, **options))
            return result, result.prompt_set.id, result.prompt_set.k
    except ImportRefused as exc:
        for e in exc.errors:
            click.echo(f"{file.name}: {e}", err=True)
        if exc.total > len(exc.errors):
            click.echo(f"... and {exc.total - len(exc.errors)} more", err=True)
        raise click.ClickException(str(exc)) from exc


def import_options(kinds: tuple[str, ...], what: str) -> Callable[[F], F]:
    """FILE, --name, --format (one of `kinds`) and --skip-invalid, as every import takes them."""

    def decorate(command: F) -> F:
        options = [
            input_file,
            click.option("--name", required=True, help=f"Name of the new {what}."),
            click.option(
                "--format",
                "kind",
                type=click.Choice(list(kinds)),
                default="auto",
                show_default=True,
                help="What the file holds; auto looks at the columns.",
            ),
            click.option(
                "--skip-invalid", is_flag=True, help="Import the valid rows and list the invalid ones."
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


preferences = group(
    "preferences",
    "External preference data (HH-RLHF, TRL, ranklab rankings exports).",
    "ranklab preferences import hh-rlhf.jsonl.gz --name hh --skip-invalid",
)


@preferences.command("import")
@import_options(KINDS, "prompt set")
def preferences_import(file: Path, name: str, kind: str, skip_invalid: bool) -> None:
    """Import a preference file as a prompt set with imported outputs and labels.

    Any invalid row refuses the whole file (each bad row is named with its line and field),
    unless --skip-invalid.

    \b
    Examples:
      ranklab preferences import hh-rlhf-harmless.jsonl.gz --name hh-harmless
      ranklab preferences import prefs.parquet --name vendor-batch-3 --skip-invalid
      ranklab preferences import ranklab-rankings.jsonl --name copy-of-round-2
    """
    from app.imports import service as imports

    r, set_id, k = _run_import(
        file, imports.import_preferences, name=name, kind=kind, skip_invalid=skip_invalid
    )
    for e in r.skipped:
        click.echo(f"skipped {file.name}: {e}", err=True)
    click.echo(
        f"imported {r.imported} of {r.rows} rows ({r.kind}) as prompt set '{name}' (id {set_id}, "
        f"K={k}, {r.tasks} tasks)" + (f"; skipped {len(r.skipped)} invalid rows" if r.skipped else "")
    )


demonstrations = group(
    "demonstrations",
    "External SFT data: conversations with the ideal assistant reply.",
    "ranklab demonstrations import sft.jsonl --name vendor-demos",
)


@demonstrations.command("import")
@import_options(DEMO_KINDS, "demonstration set")
def demonstrations_import(file: Path, name: str, kind: str, skip_invalid: bool) -> None:
    """Import demonstrations as a demonstration set: each row a prompt, a closed task and the
    reply written by the system user "imported-NAME" (not yet reviewed), ready for
    `ranklab export sft` and `ranklab train sft`.

    Rows: TRL/OpenAI {"messages": [..., {"role": "assistant", ...}]}, {"prompt", "completion"}
    (text or message lists), or HH-RLHF dialogues (the chosen side: the reply is the last
    Assistant turn). JSON Lines, .gz or Parquet. Any invalid row refuses the whole file (each
    named with its line and field), unless --skip-invalid.

    \b
    Examples:
      ranklab demonstrations import sft.jsonl --name vendor-demos
      ranklab demonstrations import hh-helpful.jsonl.gz --name hh-demos --skip-invalid
    """
    from app.imports.demonstrations import import_demonstrations

    r, set_id, _ = _run_import(file, import_demonstrations, name=name, kind=kind, skip_invalid=skip_invalid)
    for e in r.skipped:
        click.echo(f"skipped {file.name}: {e}", err=True)
    click.echo(
        f"imported {r.imported} of {r.rows} rows ({r.kind}) as demonstration set '{name}' "
        f"(id {set_id})" + (f"; skipped {len(r.skipped)} invalid rows" if r.skipped else "")
    )


COMMANDS = (preferences, demonstrations)  # what app/cli.py adds to `ranklab`
