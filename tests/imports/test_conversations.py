"""Data in and out keeps the turns: HH-RLHF and TRL conversational imports store the dialogue as
messages, and the exports give it back (`trl --conversational`, a `messages` column elsewhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.chat import as_text, conversation_hash
from app.exports.filters import Filters
from app.exports.formats import RowOptions
from app.imports import service as importer
from app.imports.upload import Upload
from app.prompts.models import Prompt
from tests.exports.data import read_rows, run_export
from tests.imports.conftest import jsonl, refused_places

# Three HH rows written as the dataset writes them: multi-turn dialogues, a shared prompt and two
# different last Assistant turns; the third prompt repeats the first's conversation.
HH_ROWS = [
    {
        "chosen": "\n\nHuman: What is a good tea for the evening?\n\nAssistant: Chamomile is caffeine free."
        "\n\nHuman: And one with a bit of caffeine?\n\nAssistant: Try a white tea.",
        "rejected": "\n\nHuman: What is a good tea for the evening?\n\nAssistant: Chamomile is caffeine free."
        "\n\nHuman: And one with a bit of caffeine?\n\nAssistant: Espresso, four shots.",
    },
    {
        "chosen": "\n\nHuman: Write <b>bold</b> in HTML.\n\nAssistant: <b>bold</b>",
        "rejected": "\n\nHuman: Write <b>bold</b> in HTML.\n\nAssistant: I can't.",
    },
    {
        "chosen": "\n\nHuman: What is a good tea for the evening?\n\nAssistant: Chamomile is caffeine free."
        "\n\nHuman: And one with a bit of caffeine?\n\nAssistant: Green tea.",
        "rejected": "\n\nHuman: What is a good tea for the evening?\n\nAssistant: Chamomile is caffeine free."
        "\n\nHuman: And one with a bit of caffeine?\n\nAssistant: None exists.",
    },
]


def trl_conversational(row: dict[str, str]) -> dict[str, Any]:
    """The TRL conversational form of an HH row, written out by hand (not with app.chat): the
    prompt is every turn before the last Assistant turn, each reply one assistant message."""

    def turns(dialogue: str) -> list[dict[str, str]]:
        out = []
        for part in dialogue.split("\n\n")[1:]:
            who, _, text = part.partition(": ")
            out.append({"role": "user" if who == "Human" else "assistant", "content": text})
        return out

    chosen, rejected = turns(row["chosen"]), turns(row["rejected"])
    assert chosen[:-1] == rejected[:-1]
    return {
        "prompt": chosen[:-1],
        "chosen": [{"role": "assistant", "content": chosen[-1]["content"]}],
        "rejected": [{"role": "assistant", "content": rejected[-1]["content"]}],
    }


def _set_filter(result: importer.ImportResult) -> Filters:
    return Filters(prompt_set_ids=[result.prompt_set.id])


class TestHHRoundTrip:
    @pytest.mark.parametrize("file_type", ["jsonl", "parquet"])
    def test_hh_import_then_trl_conversational_export_is_the_same_rows(
        self, session: Session, file_type: str
    ) -> None:
        r = importer.import_preferences(session, Upload(data=jsonl(HH_ROWS), filename="hh.jsonl", name="hh3"))
        assert (r.kind, r.imported, r.tasks) == ("hh", 3, 3)
        data, manifest = run_export(
            session, "trl", file_type, filters=_set_filter(r), opts=RowOptions(conversational=True)
        )
        assert read_rows(data, file_type) == [trl_conversational(row) for row in HH_ROWS]
        assert manifest["counts"]["prompts"] == 2  # rows 1 and 3 share one conversation

    def test_the_prompt_is_stored_as_its_turns(self, session: Session) -> None:
        r = importer.import_preferences(session, Upload(data=jsonl(HH_ROWS), filename="hh.jsonl", name="hh3"))
        prompts = session.scalars(
            select(Prompt).where(Prompt.prompt_set_id == r.prompt_set.id).order_by(Prompt.source_line)
        ).all()
        want = trl_conversational(HH_ROWS[0])["prompt"]
        assert [p.messages for p in prompts][0] == want
        assert [m["role"] for m in want] == ["user", "assistant", "user"]
        first = prompts[0]
        assert first.text == (
            "User: What is a good tea for the evening?\n\nAssistant: Chamomile is caffeine free."
            "\n\nUser: And one with a bit of caffeine?"
        )
        assert first.text == as_text(first.messages) and first.text_hash == conversation_hash(first.messages)
        # One prompt per conversation: the third row's task shares the first row's prompt.
        assert len(prompts) == 2

    def test_standard_trl_export_gives_the_readable_text(self, session: Session) -> None:
        r = importer.import_preferences(
            session, Upload(data=jsonl(HH_ROWS[1:2]), filename="h.jsonl", name="h")
        )
        rows = read_rows(run_export(session, "trl", filters=_set_filter(r))[0], "jsonl")
        assert rows == [
            {"prompt": "Write <b>bold</b> in HTML.", "chosen": "<b>bold</b>", "rejected": "I can't."}
        ]

    def test_a_bad_turn_is_named_with_its_line_and_field(self, session: Session) -> None:
        rows = [
            HH_ROWS[1],
            {
                "chosen": "\n\nHuman: hi\n\nHuman:  \n\nAssistant: a",
                "rejected": "\n\nHuman: hi\n\nHuman:\n\nAssistant: b",
            },
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: b"},
        ]
        with pytest.raises(importer.ImportRefused) as exc:
            importer.import_preferences(session, Upload(data=jsonl(rows), filename="h.jsonl", name="bad"))
        got = [(e.line, e.field) for e in exc.value.errors]
        assert got == [(2, "chosen[1].content"), (3, "chosen/rejected")]
        assert "empty" in exc.value.errors[0].message and "differ at turn 0" in exc.value.errors[1].message


class TestTRLConversational:
    CONV = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]

    def test_the_message_list_is_stored_and_exported_back(self, session: Session) -> None:
        row = {
            "prompt": self.CONV,
            "chosen": [{"role": "assistant", "content": "Rome."}],
            "rejected": [{"role": "assistant", "content": "Milan."}],
        }
        r = importer.import_preferences(session, Upload(data=jsonl([row]), filename="t.jsonl", name="t"))
        prompt = session.scalars(select(Prompt).where(Prompt.prompt_set_id == r.prompt_set.id)).one()
        assert prompt.messages == self.CONV and prompt.text_hash == conversation_hash(self.CONV)
        out = read_rows(
            run_export(session, "trl", filters=_set_filter(r), opts=RowOptions(conversational=True))[0],
            "jsonl",
        )
        assert out == [row]

    def test_conversation_rules_name_the_field(self, session: Session) -> None:
        rows = [
            {"prompt": [{"role": "user", "content": "hi"}, self.CONV[0]], "chosen": "a", "rejected": "b"},
            {
                "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
            },
            {"prompt": [{"role": "bot", "content": "hi"}], "chosen": "a", "rejected": "b"},
            {"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        ]
        assert refused_places(session, rows) == [
            (1, "prompt[1].role"),
            (2, "prompt[1].role"),
            (3, "prompt[0].role"),
            (4, "chosen[0].role"),
        ]


class TestMessagesColumn:
    CONV = TestTRLConversational.CONV

    def _import(self, session: Session) -> importer.ImportResult:
        row = {"prompt": self.CONV, "chosen": "Rome.", "rejected": "Milan."}
        return importer.import_preferences(session, Upload(data=jsonl([row]), filename="t.jsonl", name="m"))

    @pytest.mark.parametrize("file_type", ["jsonl", "parquet"])
    def test_comparisons_rankings_and_groups_carry_the_conversation(
        self, session: Session, file_type: str
    ) -> None:
        r = self._import(session)
        for fmt in ("comparisons", "rankings", "groups"):
            data, manifest = run_export(session, fmt, file_type, filters=_set_filter(r))
            rows = read_rows(data, file_type)
            assert len(rows) == 1, fmt
            assert rows[0]["messages"] == self.CONV, fmt
            assert rows[0]["prompt"] == as_text(self.CONV), fmt
            cols = manifest["columns"]
            assert cols.index("messages") == cols.index("prompt") + 1, fmt

    def test_a_rankings_export_imports_back_with_its_turns(self, session: Session, tmp_path: Path) -> None:
        r = self._import(session)
        data, _ = run_export(session, "rankings", filters=_set_filter(r))
        again = importer.import_preferences(session, Upload(data=data, filename="r.jsonl", name="copy"))
        prompt = session.scalars(select(Prompt).where(Prompt.prompt_set_id == again.prompt_set.id)).one()
        assert prompt.messages == self.CONV
        # `messages` wins over `prompt`: a row without it is one user message.
        row = read_rows(data, "jsonl")[0]
        del row["messages"]
        plain = importer.import_preferences(
            session, Upload(data=jsonl([row]), filename="r.jsonl", name="plain")
        )
        prompt = session.scalars(select(Prompt).where(Prompt.prompt_set_id == plain.prompt_set.id)).one()
        assert prompt.messages == [{"role": "user", "content": as_text(self.CONV)}]


class TestCLI:
    def test_preferences_import_then_export_trl_conversational(  # type: ignore[no-untyped-def]
        self, committed, tmp_path: Path, monkeypatch
    ) -> None:
        from click.testing import CliRunner

        from app.cli import cli
        from app.config import get_settings

        monkeypatch.setenv(
            "RANKLAB_DATABASE_URL", committed.kw["bind"].url.render_as_string(hide_password=False)
        )
        get_settings.cache_clear()
        try:
            src, out = tmp_path / "hh.jsonl", tmp_path / "trl.jsonl"
            src.write_bytes(jsonl(HH_ROWS))
            res = CliRunner().invoke(cli, ["preferences", "import", str(src), "--name", "hh-cli"])
            assert res.exit_code == 0, res.output
            res = CliRunner().invoke(
                cli, ["export", "trl", "--conversational", "--set", "hh-cli", "--out", str(out)]
            )
            assert res.exit_code == 0, res.output
            assert read_rows(out.read_bytes(), "jsonl") == [trl_conversational(row) for row in HH_ROWS]
        finally:
            get_settings.cache_clear()
