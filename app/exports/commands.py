"""`ranklab export FORMAT --out FILE [filters]`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from app.config import get_settings
from app.db import cli_sessions


def _when(value: str | None, option: str) -> datetime | None:
    from app.exports.filters import ExportError, parse_time

    try:
        return parse_time(value, option)
    except ExportError:
        raise click.BadParameter(f"not an ISO date or time: {value!r}", param_hint=option) from None


def _file_type(out: Path, given: str | None) -> str:
    if given:
        return given
    name = out.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    return "jsonl.gz" if name.endswith(".gz") else "jsonl"


@click.command()
@click.argument(
    "fmt", metavar="FORMAT", type=click.Choice(["comparisons", "trl", "rankings", "groups", "sft"])
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write; .jsonl, .jsonl.gz or .parquet picks the file type.",
)
@click.option(
    "--file-type",
    type=click.Choice(["jsonl", "jsonl.gz", "parquet"]),
    help="Override the file type the name implies.",
)
@click.option("--set", "sets", multiple=True, help="Prompt set name or id (repeatable; default all).")
@click.option("--policy", "policies", multiple=True, help="Policy version name or id (repeatable).")
@click.option("--since", help="Annotations made at or after this ISO date/time (UTC).")
@click.option("--until", help="Annotations made before this ISO date/time (UTC).")
@click.option("--labeler", "labelers", multiple=True, help="Username or pseudonym (repeatable).")
@click.option("--include-skipped", is_flag=True, help="Skipped annotations too (rankings only).")
@click.option("--exclude-flagged", is_flag=True, help="Leave out annotations with any flagged output.")
@click.option(
    "--min-labels",
    type=click.IntRange(min=0, max=2**31 - 1),
    default=0,
    show_default=True,
    help="Only tasks with at least N labels.",
)
@click.option("--split", type=click.Choice(["train", "validation", "test"]), help="Only this split.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the split by prompt.")
@click.option(
    "--split-fractions", default="0.9,0.05,0.05", show_default=True, help="train,validation,test shares."
)
@click.option("--conversational", is_flag=True, help="trl: lists of {role, content} messages.")
@click.option(
    "--margin",
    type=click.Choice(["none", "rank", "rating"]),
    default="none",
    show_default=True,
    help="trl: add a margin column (rank gap or rating difference).",
)
@click.option("--real-names", is_flag=True, help="Usernames instead of pseudonyms (for admins).")
def export(
    fmt: str,
    out: Path,
    file_type: str | None,
    sets: tuple[str, ...],
    policies: tuple[str, ...],
    since: str | None,
    until: str | None,
    labelers: tuple[str, ...],
    include_skipped: bool,
    exclude_flagged: bool,
    min_labels: int,
    split: str | None,
    split_seed: int,
    split_fractions: str,
    conversational: bool,
    margin: str,
    real_names: bool,
) -> None:
    """Write an export and its manifest (FILE.manifest.json) beside it.

    \b
    Formats: comparisons (every pair, ties marked), trl (prompt/chosen/rejected),
    rankings (one row per annotation), groups (one row per task, every ranking),
    sft (one row per demonstration that counts for training: {"messages": [...,
    {"role": "assistant", "content": reply}]}, TRL SFTTrainer's conversational shape).
    Examples:
      ranklab export trl --out prefs.jsonl
      ranklab export trl --split train --out train.parquet --conversational
      ranklab export comparisons --set round-2 --min-labels 2 --out pairs.jsonl.gz
      ranklab export sft --set demos --split train --out sft-train.jsonl
    """
    from app.exports import service
    from app.exports.filters import ExportError, Filters, parse_fractions, resolve_ids, resolve_labelers
    from app.exports.formats import RowOptions
    from app.prompts.models import PromptSet
    from app.runs.models import ModelVersion

    settings = get_settings()
    maker = cli_sessions()

    try:
        try:
            fractions = parse_fractions(split_fractions, "split fractions")
        except ExportError as exc:
            raise click.BadParameter(str(exc), param_hint="--split-fractions") from None
        with maker() as s:
            filters = Filters(
                prompt_set_ids=resolve_ids(session=s, model=PromptSet, values=sets),
                policy_version_ids=resolve_ids(session=s, model=ModelVersion, values=policies),
                since=_when(since, "--since"),
                until=_when(until, "--until"),
                labeler_ids=resolve_labelers(session=s, names=list(labelers), secret=settings.secret_key),
                include_skipped=include_skipped,
                exclude_flagged=exclude_flagged,
                min_labels=min_labels,
                split=split,
                split_seed=split_seed,
                split_fractions=fractions,
            )
        ex = service.export(
            session_factory=maker,
            fmt=fmt,
            file_type=_file_type(out, file_type),
            filters=filters,
            opts=RowOptions(conversational=conversational, margin=margin),  # type: ignore[arg-type]
            secret=settings.secret_key,
            real_names=real_names,
        )
    except (ValueError, ExportError) as exc:
        raise click.ClickException(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tmp.open("wb") as f:
        for chunk in ex.stream:
            f.write(chunk)
    tmp.replace(out)
    manifest = ex.manifest(filename=out.name)
    Path(str(out) + ".manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    c = manifest["counts"]
    if fmt == "sft":
        click.echo(
            f"wrote {c['rows']} demonstrations ({c['prompts']} prompts, by split {c['rows_by_split']}) "
            f"to {out}; sha256 {manifest['sha256'][:12]}…, manifest {out}.manifest.json"
        )
        return
    click.echo(
        f"wrote {c['rows']} {fmt} rows ({c['pairs']} pairs, {c['ties']} ties, "
        f"{c['annotations']} annotations, {c['prompts']} prompts) to {out}; "
        f"sha256 {manifest['sha256'][:12]}…, manifest {out}.manifest.json"
    )


COMMANDS = (export,)  # what app/cli.py adds to `ranklab`
