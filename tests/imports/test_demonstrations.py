"""`demonstrations import`: TRL/OpenAI messages, prompt/completion and HH-RLHF rows in as a
demonstration set that `export sft` reads back; all or nothing with located errors."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.auth.models import User
from app.cli import cli
from app.imports.demonstrations import import_demonstrations
from app.imports.service import ImportRefused
from app.imports.upload import Upload
from app.labeling.models import Annotation, Demonstration, Task
from app.prompts.models import Prompt, PromptSet
from tests.exports.data import read_rows, run_export
from tests.factories import count_rows

U = {"role": "user", "content": "Say hi."}
A = {"role": "assistant", "content": "Hi!"}


def jl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def sft_rows(session: Session, name: str) -> list[dict[str, Any]]:
    set_id = session.scalar(select(PromptSet.id).where(PromptSet.name == name))
    from app.exports.filters import Filters

    return read_rows(run_export(session, "sft", filters=Filters(prompt_set_ids=[set_id]))[0], "jsonl")


class TestFormats:
    def test_messages_rows_become_a_demonstration_set(self, session: Session) -> None:
        rows = [
            {"messages": [U, A]},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "3+3?"},
                    {"role": "assistant", "content": " 6 "},
                ]
            },
            {"messages": [U, {"role": "assistant", "content": "Hello."}]},  # same prompt, 2nd reply
        ]
        r = import_demonstrations(session, Upload(data=jl(rows), filename="d.jsonl", name="demo-in"))
        assert (r.kind, r.rows, r.imported, r.skipped) == ("messages", 3, 3, [])
        ps = r.prompt_set
        assert (ps.kind, ps.status) == ("demonstration", "archived")
        assert count_rows(session, Prompt) == 2 and count_rows(session, Task) == 3
        tasks = list(session.scalars(select(Task)))
        assert {t.status for t in tasks} == {"closed"} and {t.label_count for t in tasks} == {1}
        user = session.scalar(select(User).join(Annotation, Annotation.user_id == User.id))
        assert user is not None and user.username == "imported-demo-in" and user.is_system
        assert set(session.scalars(select(Demonstration.review_status))) == {"unreviewed"}
        out = sft_rows(session, "demo-in")
        assert [r["messages"] for r in out] == [
            [U, A],
            [*rows[1]["messages"][:-1], {"role": "assistant", "content": "6"}],
            rows[2]["messages"],
        ]

    def test_prompt_completion_rows_text_or_messages(self, session: Session) -> None:
        rows = [
            {"prompt": "Say hi.", "completion": "Hi!"},
            {"prompt": [U], "completion": [A]},
            {"prompt": [{"role": "user", "content": "Name a colour."}], "completion": "Blue."},
        ]
        r = import_demonstrations(session, Upload(data=jl(rows), filename="pc.jsonl", name="pc"))
        assert (r.kind, r.imported) == ("prompt-completion", 3)
        replies = [row["messages"][-1]["content"] for row in sft_rows(session, "pc")]
        assert replies == ["Hi!", "Hi!", "Blue."]

    def test_hh_dialogues_the_chosen_side(self, session: Session) -> None:
        start = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: "
        rows = [{"chosen": start + "fine, thanks", "rejected": start + "go away"}]
        r = import_demonstrations(session, Upload(data=jl(rows), filename="hh.jsonl", name="hh"))
        assert r.kind == "hh"
        [row] = sft_rows(session, "hh")
        assert row["messages"] == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you?"},
            {"role": "assistant", "content": "fine, thanks"},
        ]

    def test_parquet_and_gzip(self, session: Session) -> None:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{"prompt": "a?", "completion": "b."}]), buf)
        assert (
            import_demonstrations(
                session, Upload(data=buf.getvalue(), filename="x.parquet", name="pq")
            ).imported
            == 1
        )
        gz = gzip.compress(jl([{"messages": [U, A]}]))
        assert import_demonstrations(session, Upload(data=gz, filename="x.jsonl.gz", name="gz")).imported == 1


BAD = [
    {"messages": [U, A]},  # line 1: fine
    {"messages": [U, U]},  # line 2: the last turn is not the assistant's
    {"messages": [{"role": "user", "content": " "}, A]},  # line 3: empty user turn
    "not an object",  # line 4
    {"messages": [U, {"role": "assistant", "content": "  "}]},  # line 5: empty reply
    {"messages": [A]},  # line 6: no prompt
]


class TestErrors:
    def test_all_or_nothing_with_each_bad_row_located(self, session: Session) -> None:
        with pytest.raises(ImportRefused, match="5 invalid row") as exc:
            import_demonstrations(session, Upload(data=jl(BAD), filename="bad.jsonl", name="bad"))
        assert [(e.line, e.field) for e in exc.value.errors] == [
            (2, "messages[1].role"),
            (3, "messages[0].content"),
            (4, "row"),
            (5, "messages[1].content"),
            (6, "messages"),
        ]
        assert count_rows(session, PromptSet) == 0 and count_rows(session, Demonstration) == 0

    def test_skip_invalid_keeps_the_good_rows(self, session: Session) -> None:
        r = import_demonstrations(
            session, Upload(data=jl(BAD), filename="bad.jsonl", name="bad", skip_invalid=True)
        )
        assert r.imported == 1 and [e.line for e in r.skipped] == [2, 3, 4, 5, 6]
        assert r.prompt_set.report["imported"]["skipped"] == 5

    def test_prompt_completion_and_hh_errors(self, session: Session) -> None:
        rows = [
            {"prompt": "a", "completion": [{"role": "user", "content": "x"}]},
            {"prompt": 3, "completion": "x"},
            {"prompt": "a", "completion": ""},
        ]
        with pytest.raises(ImportRefused) as exc:
            import_demonstrations(session, Upload(data=jl(rows), filename="pc.jsonl", name="pc"))
        assert [(e.line, e.field) for e in exc.value.errors] == [
            (1, "completion[0].role"),
            (2, "prompt"),
            (3, "completion"),
        ]
        hh = [{"chosen": "\n\nHuman: hi"}, {"chosen": "no turns"}]
        with pytest.raises(ImportRefused) as exc:
            import_demonstrations(session, Upload(data=jl(hh), filename="hh.jsonl", name="hh", kind="hh"))
        assert [(e.line, e.field) for e in exc.value.errors] == [(1, "chosen"), (2, "chosen")]

    def test_name_taken_and_unknown_shape(self, session: Session) -> None:
        import_demonstrations(session, Upload(data=jl([{"messages": [U, A]}]), filename="a.jsonl", name="x"))
        with pytest.raises(ImportRefused, match="exists"):
            import_demonstrations(
                session, Upload(data=jl([{"messages": [U, A]}]), filename="a.jsonl", name="x")
            )
        with pytest.raises(ImportRefused, match="no row looks like"):
            import_demonstrations(session, Upload(data=jl([{"text": "x"}]), filename="a.jsonl", name="y"))


def test_the_cli_refuses_then_skips(cli_db: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jl(BAD))
    res = CliRunner().invoke(cli, ["demonstrations", "import", str(path), "--name", "d"])
    assert res.exit_code == 1
    assert "bad.jsonl: line 2: messages[1].role: the last message must be the assistant's reply" in res.output
    assert "nothing was imported" in res.output
    with cli_db() as s:
        assert s.scalar(select(func.count()).select_from(PromptSet)) == 0
    res = CliRunner().invoke(cli, ["demonstrations", "import", str(path), "--name", "d", "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert "imported 1 of 6 rows (messages) as demonstration set 'd'" in res.output
    assert "skipped bad.jsonl: line 4: row" in res.output
