"""`ranklab prompts import` and `ranklab prompts list`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.cli import cli
from app.prompts.models import Prompt, PromptSet
from app.runs.models import Job
from tests.prompts.conftest import parquet_bytes


@pytest.fixture
def db(cli_db: sessionmaker[Session]) -> sessionmaker[Session]:
    return cli_db


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ranklab")


class TestPromptsImport:
    def test_imports_each_format_and_queues_sampling(self, db: sessionmaker[Session], tmp_path: Path) -> None:
        files = {
            "a.jsonl": b'{"prompt": "One"}\n{"instruction": "Two", "input": "x"}\n',
            "b.csv": b"prompt,tag\nOne,a\nOne,b\n",
            "c.parquet": parquet_bytes({"prompt": ["One", "Two", "Three"]}),
        }
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            result = run(
                "prompts",
                "import",
                str(tmp_path / name),
                "--name",
                name,
                "--k",
                "5",
                "--overlap",
                "2",
                "--temperature",
                "0.9",
            )
            assert result.exit_code == 0, result.output
            assert f"into set '{name}'" in result.output and "sampling job" in result.output
        assert (
            "imported 1 prompts from 2 rows into set 'again'"
            in run("prompts", "import", str(tmp_path / "b.csv"), "--name", "again").output
        )
        with db() as s:
            sets = {ps.name: ps for ps in s.scalars(select(PromptSet))}
            assert {n: ps.report["imported"] for n, ps in sets.items()} == {
                "a.jsonl": 2,
                "b.csv": 1,
                "c.parquet": 3,
                "again": 1,
            }
            assert sets["a.jsonl"].k == 5 and sets["a.jsonl"].sampling["temperature"] == 0.9
            assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "sample")) == 4
        listing = run("prompts", "list")
        assert listing.exit_code == 0 and "c.parquet" in listing.output and "0/3 sampled" in listing.output

    def test_a_bad_file_prints_each_problem_and_imports_nothing(
        self, db: sessionmaker[Session], tmp_path: Path
    ) -> None:
        path = tmp_path / "bad.jsonl"
        path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "  "}\n{"nope": 1}\n')
        result = run("prompts", "import", str(path), "--name", "bad", "--k", "3")
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            "bad.jsonl, field 'k': K must be between 4 and 9, got 3",
            "bad.jsonl, line 2, field 'prompt': empty or only whitespace",
            "bad.jsonl, line 3, field 'prompt': missing: each row needs 'prompt' or 'messages'",
            "3 problem(s): nothing was imported.",
        ]
        with db() as s:
            assert s.scalar(select(func.count()).select_from(PromptSet)) == 0
            assert s.scalar(select(func.count()).select_from(Prompt)) == 0
            assert s.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize("command", [["prompts"], ["prompts", "import"], ["prompts", "list"], ["demo"]])
def test_help_teaches_with_an_example_of_the_command(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    examples = [line.strip() for line in result.output.splitlines() if line.strip().startswith("ranklab ")]
    assert any(line.startswith("ranklab " + " ".join(command)) for line in examples), result.output
