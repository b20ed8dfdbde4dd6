"""`preferences import`: HH-RLHF on the shared file, TRL, the rankings round trip, validation."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.chat import as_text, conversation_hash, split_hh
from app.exports.filters import Filters
from app.exports.formats import RowOptions
from app.imports import service as importer
from app.imports.upload import Upload
from app.labeling.models import Annotation, AnnotationItem, Completion, Task
from app.prompts.models import Prompt, PromptSet
from app.runs.models import ModelVersion
from tests.exports.data import build, read_rows, run_export
from tests.factories import count_rows
from tests.imports.conftest import jsonl, refused_places

# Refused rows of the shared HH file, by field: two whose chosen reply is empty, four whose
# dialogue ends with two Assistant turns in a row (so the turns before the reply end with one).
HH_BAD = [
    (689, "chosen"),
    (823, "chosen"),
    (1261, "chosen[3].role"),
    (1465, "rejected[1].role"),
    (1467, "chosen[3].role"),
    (1532, "chosen[9].role"),
]
HH_BAD_LINES = [line for line, _ in HH_BAD]


class TestHH:
    def test_refused_whole_with_line_numbers_then_skip_invalid(
        self, session: Session, shared_data: Path
    ) -> None:
        data = (shared_data / "hh-harmless-dev.jsonl.gz").read_bytes()
        before = [count_rows(session, m) for m in (PromptSet, Prompt, Task, Annotation)]
        with pytest.raises(importer.ImportRefused) as exc:
            importer.import_preferences(session, Upload(data=data, filename="hh.jsonl.gz", name="hh"))
        assert [e.line for e in exc.value.errors] == HH_BAD_LINES
        assert [(e.line, e.field) for e in exc.value.errors] == HH_BAD
        assert all("reply is missing" in e.message for e in exc.value.errors[:2])
        assert all("the last message must be from the user" in e.message for e in exc.value.errors[2:])
        assert "nothing was imported" in str(exc.value)
        assert [count_rows(session, m) for m in (PromptSet, Prompt, Task, Annotation)] == before

        r = importer.import_preferences(
            session, Upload(data=data, filename="hh.jsonl.gz", name="hh", skip_invalid=True)
        )
        assert (r.kind, r.rows, r.imported) == ("hh", 1746, 1740)
        assert [e.line for e in r.skipped] == HH_BAD_LINES
        ps = r.prompt_set
        assert ps.k == 2 and ps.report["imported"]["skipped"] == 6
        assert count_rows(session, Annotation) - before[3] == 1740

        # The prompt is the dialogue before the last Assistant turn, as messages; the two last
        # Assistant turns are the completions.
        first = json.loads(gzip.decompress(data).split(b"\n")[0])
        prompt = session.scalar(select(Prompt).where(Prompt.prompt_set_id == ps.id, Prompt.source_line == 1))
        assert prompt is not None
        assert prompt.messages == split_hh(first["chosen"])[:-1] == split_hh(first["rejected"])[:-1]
        assert prompt.messages[0] == {
            "role": "user",
            "content": "How much alcohol can I drink per day?",
        }
        assert prompt.messages[-1]["role"] == "user"
        assert prompt.text == as_text(prompt.messages) and prompt.text_hash == conversation_hash(
            prompt.messages
        )
        rows = read_rows(run_export(session, "trl", filters=Filters(prompt_set_ids=[ps.id]))[0], "jsonl")
        assert len(rows) == 1740
        assert {
            "prompt": prompt.text,
            "chosen": split_hh(first["chosen"])[-1]["content"],
            "rejected": split_hh(first["rejected"])[-1]["content"],
        } == rows[0]
        conv = read_rows(
            run_export(
                session,
                "trl",
                filters=Filters(prompt_set_ids=[ps.id]),
                opts=RowOptions(conversational=True),
            )[0],
            "jsonl",
        )[0]
        assert conv["prompt"] == prompt.messages and len(conv["prompt"]) == 5
        assert [m["role"] for m in conv["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
        assert conv["chosen"] == [{"role": "assistant", "content": rows[0]["chosen"]}]

        # imported outputs and labels are marked as such
        mv = session.scalar(select(ModelVersion).where(ModelVersion.source == "imported:hh"))
        assert mv is not None and mv.kind == "policy" and not mv.is_active
        user = session.scalar(select(User).where(User.username == "imported-hh"))
        assert user is not None and user.is_system
        assert (
            session.scalar(
                select(func.count()).select_from(Completion).where(Completion.model_version_id == mv.id)
            )
            == 3480
        )

    def test_hh_rules_on_small_files(self, session: Session) -> None:
        good = {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello",
            "rejected": "\n\nHuman: hi\n\nAssistant: go away",
        }
        rows = [
            good,
            {"chosen": "\n\nHuman: hi", "rejected": "x\n\nAssistant: y"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: same", "rejected": "\n\nHuman: hi\n\nAssistant: same"},
            {"chosen": 3, "rejected": "a"},
        ]
        with pytest.raises(importer.ImportRefused) as exc:
            importer.import_preferences(
                session, Upload(data=jsonl(rows), filename="x.jsonl", name="s", kind="hh")
            )
        assert [(e.line, e.field) for e in exc.value.errors] == [
            (2, "chosen"),
            (3, "rejected"),
            (4, "chosen"),
        ]


class TestTRL:
    def test_standard_conversational_and_parquet(self, session: Session) -> None:
        rows = [
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
            {
                "prompt": [{"role": "user", "content": "Say hi."}],
                "chosen": [{"role": "assistant", "content": "Hi!"}],
                "rejected": [{"role": "assistant", "content": "No."}],
            },
        ]
        r = importer.import_preferences(session, Upload(data=jsonl(rows), filename="p.jsonl", name="trl-a"))
        assert (r.kind, r.imported, r.prompt_set.k) == ("trl", 2, 2)
        out = read_rows(
            run_export(session, "trl", filters=Filters(prompt_set_ids=[r.prompt_set.id]))[0], "jsonl"
        )
        assert out == [
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
        ]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([rows[0]]), buf)
        r2 = importer.import_preferences(
            session, Upload(data=buf.getvalue(), filename="p.parquet", name="trl-b")
        )
        assert r2.imported == 1

    def test_each_bad_row_named(self, session: Session) -> None:
        data = (
            b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
            b"not json\n"
            b'{"prompt": "", "chosen": "b", "rejected": "c"}\n'
            b'{"prompt": "a", "chosen": "b"}\n'
            b"[1, 2]\n"
            b'{"prompt": "a", "chosen": "b", "rejected": "b"}\n'
        )
        sets = count_rows(session, PromptSet)
        with pytest.raises(importer.ImportRefused) as exc:
            importer.import_preferences(session, Upload(data=data, filename="t.jsonl", name="t"))
        assert [(e.line, e.field) for e in exc.value.errors] == [
            (2, "row"),
            (3, "prompt"),
            (4, "rejected"),
            (5, "row"),
            (6, "rejected"),
        ]
        assert "line 2: row: not valid JSON" in str(exc.value.errors[0])
        assert count_rows(session, PromptSet) == sets
        r = importer.import_preferences(
            session, Upload(data=data, filename="t.jsonl", name="t", skip_invalid=True)
        )
        assert r.imported == 1 and len(r.skipped) == 5

    def test_name_taken_empty_file_and_garbage(self, session: Session) -> None:
        data = jsonl([{"prompt": "a", "chosen": "b", "rejected": "c"}])
        importer.import_preferences(session, Upload(data=data, filename="t.jsonl", name="dup"))
        with pytest.raises(importer.ImportRefused, match="exists"):
            importer.import_preferences(session, Upload(data=data, filename="t.jsonl", name="dup"))
        with pytest.raises(importer.ImportRefused):
            importer.import_preferences(session, Upload(data=b"", filename="t.jsonl", name="e"))
        with pytest.raises(importer.ImportRefused) as exc:
            importer.import_preferences(session, Upload(data=b'{"a": 1}\n', filename="t.jsonl", name="g"))
        assert "HH-RLHF" in str(exc.value.errors[0])

    def test_a_nul_character_is_a_located_row_error(self, session: Session) -> None:
        # PostgreSQL cannot store NUL in text or JSON: the row is named, nothing is written.
        rows = [
            {"prompt": "a", "chosen": "b", "rejected": "c"},
            {"prompt": "x\x00y", "chosen": "b", "rejected": "c"},
            {"prompt": [{"role": "user", "content": "hi\x00"}], "chosen": "b", "rejected": "c"},
        ]
        before = count_rows(session, PromptSet)
        assert refused_places(session, rows) == [(2, "prompt"), (3, "prompt.0.content")]
        assert count_rows(session, PromptSet) == before
        r = importer.import_preferences(
            session, Upload(data=jsonl(rows), filename="t.jsonl", name="n", skip_invalid=True)
        )
        session.flush()
        assert r.imported == 1 and [e.line for e in r.skipped] == [2, 3]
        with pytest.raises(importer.ImportRefused, match="NUL"):
            importer.import_preferences(session, Upload(data=jsonl(rows[:1]), filename="t", name="a\x00"))
        one = jsonl(rows[:1])
        r = importer.import_preferences(session, Upload(data=one, filename="t\x00.jsonl", name="f"))
        session.flush()
        assert r.imported == 1


class TestRankingsRoundTrip:
    def _norm(self, rows: list[dict]) -> list[tuple]:  # type: ignore[type-arg]
        return [
            (
                r["prompt"],
                r["notes"],
                r["time_spent_ms"],
                r["created_at"],
                r["skip_reason"],
                tuple(
                    (c["text"], c["rank"], c["rating"], tuple(c["flags"]), c["position"])
                    for c in r["completions"]
                ),
            )
            for r in rows
        ]

    @pytest.mark.parametrize("file_type", ["jsonl", "parquet"])
    def test_export_import_export_gives_the_same_rankings(self, session: Session, file_type: str) -> None:
        w = build(session)
        f = Filters(prompt_set_ids=[w.set_a.id, w.set_b.id], include_skipped=True)
        data, _ = run_export(session, "rankings", file_type, filters=f)
        original = read_rows(data, file_type)
        r = importer.import_preferences(session, Upload(data=data, filename=f"r.{file_type}", name="copy"))
        assert (r.kind, r.imported, r.tasks) == ("rankings", 5, 3)
        assert r.prompt_set.k == 4 and r.prompt_set.overlap == 2
        again = read_rows(
            run_export(
                session,
                "rankings",
                file_type,
                filters=Filters(prompt_set_ids=[r.prompt_set.id], include_skipped=True),
            )[0],
            file_type,
        )
        assert self._norm(again) == self._norm(original)
        # labelers stay distinct (one imported labeler each), so agreement survives the trip
        assert len({x["labeler"] for x in again}) == 2
        groups = read_rows(
            run_export(session, "groups", filters=Filters(prompt_set_ids=[r.prompt_set.id]))[0],
            "jsonl",
        )
        assert [g["ranks"] for g in groups[0]["rankings"]] == [[1, 1, 2, 3], [1, 2, 3, 4]]
        assert {x["policy"] for x in again[0]["completions"]} == {"imported:copy/policy-v1"}

    def test_bad_ranking_rows(self, session: Session) -> None:
        rows = [
            {"prompt": "p", "completions": [{"text": "a", "rank": 1}, {"text": "b", "rank": 0}]},
            {"prompt": "p", "completions": [{"text": "a", "rank": 1, "rating": 9}, {"text": "b", "rank": 2}]},
            {"prompt": "p", "completions": [{"text": "a", "rank": 1}]},
            {"prompt": "p", "completions": [{"text": "a", "rank": 1, "flags": "x"}, {"rank": 2}]},
            {
                "prompt": "p",
                "task_id": 1,
                "labeler": "x",
                "completions": [{"text": "a", "rank": 1}, {"text": "b", "rank": 2}],
            },
            {
                "prompt": "q",
                "task_id": 1,
                "labeler": "y",
                "completions": [{"text": "a", "rank": 1}, {"text": "b", "rank": 2}],
            },
        ]
        assert refused_places(session, rows, "r.jsonl") == [
            (1, "completions[1].rank"),
            (2, "completions[0].rating"),
            (3, "completions"),
            (4, "completions[0].flags"),
            (4, "completions[1].text"),
            (6, "prompt"),
        ]


class TestCLI:
    def test_import_refuses_then_skips(self, committed, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        from click.testing import CliRunner

        from app.cli import cli
        from app.config import get_settings

        monkeypatch.setenv(
            "RANKLAB_DATABASE_URL", committed.kw["bind"].url.render_as_string(hide_password=False)
        )
        get_settings.cache_clear()
        try:
            f = tmp_path / "p.jsonl"
            f.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
            res = CliRunner().invoke(cli, ["preferences", "import", str(f), "--name", "cli-set"])
            assert res.exit_code == 1 and "line 2: chosen: missing" in res.output
            with committed() as s:
                assert count_rows(s, PromptSet) == 0
            res = CliRunner().invoke(
                cli, ["preferences", "import", str(f), "--name", "cli-set", "--skip-invalid"]
            )
            assert res.exit_code == 0, res.output
            assert "imported 1 of 2 rows" in res.output and "skipped p.jsonl: line 2" in res.output
            with committed() as s:
                assert count_rows(s, AnnotationItem) == 2
        finally:
            get_settings.cache_clear()
