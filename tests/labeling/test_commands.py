"""`ranklab guidelines set|show` and `ranklab labeling status`, on SQLite."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.cli import cli
from app.labeling.models import Guideline
from tests.factories import make_annotation, make_prompt_set, make_task, make_user


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def db(cli_db: sessionmaker[Session]) -> sessionmaker[Session]:
    return cli_db


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), input=input, prog_name="ranklab")


def test_guidelines_set_then_show(db: sessionmaker[Session]) -> None:
    with db() as s:
        make_user(s, role="admin", username="alice")
        s.commit()
    assert run("guidelines", "show").exit_code != 0
    r = run("guidelines", "set", "-", "--by", "alice", input="# Rules\n\nBe fair.\n")
    assert r.exit_code == 0 and "v1" in r.output, r.output
    assert run("guidelines", "set", "-", input="# Rules v2\n").exit_code == 0
    assert run("guidelines", "set", "-", input="   \n").exit_code != 0  # empty: refused
    assert "# Rules v2" in run("guidelines", "show").stdout
    assert "Be fair." in run("guidelines", "show", "--version", "1").stdout
    with db() as s:
        assert [g.version for g in s.scalars(select(Guideline).order_by(Guideline.version))] == [1, 2]


def test_labeling_status(db: sessionmaker[Session]) -> None:
    with db() as s:
        ps = make_prompt_set(s, name="chat-v1", k=2, overlap=1)
        t1, _ = make_task(s, prompt_set=ps), make_task(s, prompt_set=ps)
        make_annotation(s, task=t1, user=make_user(s), ranks=[1, 2], ratings=[6, 2])
        t1.status = "closed"
        s.commit()
    r = run("labeling", "status")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("chat-v1"))
    assert line.split()[1:] == ["active", "1", "1", "0", "1", "0"]


@pytest.mark.parametrize("command", [["guidelines", "set"], ["guidelines", "show"], ["labeling", "status"]])
def test_every_command_help_has_an_example(command: list[str]) -> None:
    r = run(*command, "--help")
    assert r.exit_code == 0 and "Example" in r.output
    assert f"ranklab {' '.join(command)}" in r.output.split("Example", 1)[1]
