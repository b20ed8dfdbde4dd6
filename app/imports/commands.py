"""`ranklab preferences import FILE --name NAME`."""

from __future__ import annotations

from pathlib import Path

import click

from app.commands import group

preferences = group(
    "preferences",
    "External preference data (HH-RLHF, TRL, ranklab rankings exports).",
    "ranklab preferences import hh-rlhf.jsonl.gz --name hh --skip-invalid",
)


@preferences.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name of the new prompt set.")
@click.option(
    "--format",
    "kind",
    type=click.Choice(["auto", "hh", "trl", "rankings"]),
    default="auto",
    show_default=True,
    help="What the file holds; auto looks at the columns.",
)
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows and list the invalid ones.")
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
    from app.cli import sessions
    from app.imports import service as imports

    try:
        with sessions().begin() as s:
            r = imports.import_preferences(
                session=s,
                data=file.read_bytes(),
                filename=file.name,
                name=name,
                kind=kind,
                skip_invalid=skip_invalid,
            )
            set_id, k = r.prompt_set.id, r.prompt_set.k
    except imports.ImportRefused as exc:
        for e in exc.errors:
            click.echo(f"{file.name}: {e}", err=True)
        if exc.total > len(exc.errors):
            click.echo(f"... and {exc.total - len(exc.errors)} more", err=True)
        raise click.ClickException(str(exc)) from exc
    for e in r.skipped:
        click.echo(f"skipped {file.name}: {e}", err=True)
    click.echo(
        f"imported {r.imported} of {r.rows} rows ({r.kind}) as prompt set '{name}' (id {set_id}, "
        f"K={k}, {r.tasks} tasks)" + (f"; skipped {len(r.skipped)} invalid rows" if r.skipped else "")
    )


COMMANDS = (preferences,)  # what app/cli.py adds to `ranklab`
