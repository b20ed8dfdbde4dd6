"""The `ranklab` command. Each domain adds its own commands in its `commands.py`."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys

import click

from app.config import get_settings
from app.db import cli_sessions

# Modules with COMMANDS (what each adds to `ranklab`); imported at start-up: none imports torch at the top.
COMMAND_MODULES = (
    "app.auth.commands",
    "app.prompts.commands",
    "app.labeling.commands",
    "app.exports.commands",
    "app.imports.commands",
    "app.runs.commands",
    "app.runs.train_commands",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log what the worker and server do.")
def cli(verbose: bool) -> None:
    """ranklab: collect human rankings of model outputs and close the RLHF loop on them.

    \b
    Settings come from RANKLAB_* environment variables or a .env file, e.g.
      RANKLAB_DATABASE_URL=postgresql+psycopg://ranklab@localhost/ranklab
    First steps on a fresh install:
      ranklab db upgrade
      ranklab users create --username alice --role admin
      ranklab serve
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


sessions = cli_sessions  # commands open short transactions with it


@cli.group()
def db() -> None:
    """Create or update the database schema (Alembic migrations).

    \b
    Examples:
      ranklab db upgrade                      # after installing or updating ranklab
      ranklab db downgrade --revision base    # empty the database (asks first)
    """


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Apply every migration not yet applied. Safe to run again.

    \b
    Example:
      RANKLAB_DATABASE_URL=postgresql+psycopg://localhost/ranklab ranklab db upgrade
    """
    from app import migrate

    url = get_settings().database_url
    migrate.upgrade(url, revision)
    click.echo(f"database is up to date ({_redact(url)})")


@db.command("downgrade")
@click.option("--revision", required=True, help="Target revision; 'base' empties the database.")
@click.confirmation_option(prompt="Downgrading drops tables and their data. Continue?")
def db_downgrade(revision: str) -> None:
    """Undo migrations down to REVISION.

    \b
    Example:
      ranklab db downgrade --revision base    # drop every table (asks for confirmation)
    """
    from app import migrate

    migrate.downgrade(get_settings().database_url, revision)
    click.echo(f"downgraded to {revision}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option("--no-worker", is_flag=True, help="Do not start a worker beside the server.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Web server processes (uvicorn workers); each keeps its own pool of RANKLAB_DB_POOL_SIZE.",
)
def serve(host: str, port: int, no_worker: bool, workers: int) -> None:
    """Serve the web app, with one worker process beside it for sampling and training.

    \b
    Examples:
      ranklab serve                      # http://127.0.0.1:8000 and a worker
      ranklab serve --host 0.0.0.0 --no-worker   # workers run elsewhere: `ranklab worker`
      ranklab serve --workers 2          # two web processes (PostgreSQL; SQLite has one writer)
    """
    import uvicorn

    get_settings()  # bad production settings stop here, before a worker or server starts
    worker = None
    if not no_worker and importlib.util.find_spec("torch") is None:
        click.echo(
            'no worker started here: torch is not installed (pip install "ranklab[train]"), '
            "so run `ranklab worker` on a machine that has it",
            err=True,
        )
        no_worker = True
    if not no_worker:
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"])  # noqa: S603
    click.echo(
        f"ranklab is serving at http://{host}:{port}/"
        + ("" if no_worker else f" (worker pid {worker.pid if worker else '-'})")
    )
    try:
        # The import string (not an app object) is what lets uvicorn start several processes.
        uvicorn.run(
            "app.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="info"
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty instead of waiting.")
@click.option("--kind", "kinds", multiple=True, help="Only take jobs of this kind (repeatable).")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between looks at the queue.")
def worker(burst: bool, kinds: tuple[str, ...], poll: float) -> None:
    """Claim and run jobs (sampling, training) from the database queue.

    Run any number of workers on any number of machines against one PostgreSQL database:
    each job is taken by exactly one. A worker that dies stops beating; its job goes back
    to the queue after RANKLAB_JOB_STALE_SECONDS.

    \b
    Examples:
      ranklab worker                 # work forever
      ranklab worker --burst         # run what is queued, then exit
      ranklab worker --kind sample   # only sampling jobs
    """
    from app.runs import inline

    settings = get_settings()
    w = inline.make_worker(
        sessions(),
        poll_seconds=poll,
        stale_seconds=settings.job_stale_seconds,
        heartbeat_seconds=inline.heartbeat_seconds(),
        kinds=list(kinds) or None,
    )
    click.echo(f"worker {w.worker_id} started" + (" (burst)" if burst else ""), err=True)
    try:
        n = w.run(burst=burst)
    except KeyboardInterrupt:
        w.stop.set()
        return
    click.echo(f"worker {w.worker_id} ran {n} job(s)", err=True)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


for _module in COMMAND_MODULES:
    for _command in importlib.import_module(_module).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="ranklab")


if __name__ == "__main__":
    main()
