"""Prompts are conversations: every upload shape becomes messages, errors name line and field,
duplicates are found on the normalised conversation, and the upload's token count is that of
the renderer the worker feeds the model."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.chat import conversation_hash
from app.config import Settings
from app.prompts import tokens, upload
from app.prompts.models import Prompt
from app.prompts.parsing import parse_prompt_file
from tests.factories import make_model_version

SYSTEM = {"role": "system", "content": "Answer in one word."}
USER = {"role": "user", "content": "What is the capital of France?"}
THREE_TURNS = [
    SYSTEM,
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]


def jl(*rows: object) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def parse(data: bytes, filename: str = "p.jsonl", **kw: Any) -> Any:
    return parse_prompt_file(filename=filename, data=data, max_bytes=10**7, max_tokens=10**6, **kw)


class TestShapes:
    def test_every_json_lines_shape_becomes_a_conversation(self) -> None:
        result = parse(
            jl(
                {"prompt": "Write a haiku about rain."},
                {"messages": [SYSTEM, USER], "topic": "geo"},
                {"system": "Be brief.", "prompt": "Explain tides."},
                {"prompt": "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: tell me a joke\n\nAssistant:"},
            )
        )
        assert result.problems == []
        got = [p.messages for p in result.prompts]
        assert got[0] == [{"role": "user", "content": "Write a haiku about rain."}]
        assert got[1] == [SYSTEM, USER] and result.prompts[1].meta == {"topic": "geo"}
        assert got[2] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Explain tides."},
        ]
        assert got[3] == [
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "tell me a joke"},
        ]
        assert result.prompts[0].text == "Write a haiku about rain."  # a lone user turn reads as itself

    def test_csv_and_parquet_take_a_messages_column(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        csv = "messages,topic\n" + '"' + json.dumps(THREE_TURNS).replace('"', '""') + '",colours\n'
        assert [p.messages for p in parse(csv.encode(), "p.csv").prompts] == [THREE_TURNS]
        buf = io.BytesIO()
        pq.write_table(pa.table({"messages": [THREE_TURNS, [USER]], "n": [1, 2]}), buf)
        result = parse(buf.getvalue(), "p.parquet")
        assert result.problems == []
        assert [p.messages for p in result.prompts] == [THREE_TURNS, [USER]]

    def test_duplicates_are_the_same_normalised_conversation_however_given(self) -> None:
        result = parse(
            jl(
                {"prompt": "What is the capital of France?"},
                {"messages": [{"role": "user", "content": "  What is the capital of France?\r\n"}]},
                {"messages": [SYSTEM, USER]},
            )
        )
        assert len(result.prompts) == 2 and result.duplicates == 1 and result.duplicate_lines == [2]
        assert result.prompts[0].hash == conversation_hash([USER])


class TestErrors:
    @pytest.mark.parametrize(
        ("row", "field", "words"),
        [
            ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "robot"),
            ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content", "empty"),
            ({"messages": [USER, {"role": "assistant", "content": "Paris"}]}, "messages[1].role", "user"),
            ({"messages": [USER, SYSTEM, USER]}, "messages[1].role", "first"),
            ({"messages": "not json"}, "messages", "JSON"),
            ({"system": 3, "prompt": "hi"}, "system", "text"),
            ({"prompt": "\n\nHuman: hi\n\nAssistant: hello"}, "prompt[1].role", "user"),
        ],
    )
    def test_each_problem_names_line_and_field(self, row: dict[str, Any], field: str, words: str) -> None:
        result = parse(jl({"prompt": "fine"}, row))
        assert len(result.problems) == 1
        problem = result.problems[0]
        assert (problem.line, problem.field) == (2, field)
        assert words.lower() in problem.message.lower(), problem.message

    def test_too_long_after_templating_is_refused_with_its_count(self) -> None:
        result = parse(jl({"messages": [SYSTEM, USER]}), count_tokens=lambda conv: 10 * len(conv))
        assert result.prompts == [] or result.problems == []
        refused = parse_prompt_file(
            filename="p.jsonl",
            data=jl({"messages": [SYSTEM, USER]}),
            max_bytes=10**7,
            max_tokens=15,
            count_tokens=lambda conv: 10 * len(conv),
        )
        assert [(p.line, p.field) for p in refused.problems] == [(1, "messages")]
        assert "20 tokens after the chat template" in refused.problems[0].message


def test_an_uploaded_conversation_is_stored_whole(session: Session, tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", env="test", artifacts_dir=str(tmp_path))  # type: ignore[call-arg]
    ps = upload.import_prompt_set(
        session=session,
        settings=settings,
        name="conv",
        filename="c.jsonl",
        data=jl({"messages": THREE_TURNS}),
    )
    stored = session.scalars(select(Prompt).where(Prompt.prompt_set_id == ps.id)).one()
    assert stored.messages == THREE_TURNS
    assert stored.text.startswith("System: Answer in one word.\n\nUser: Name a colour.")
    assert stored.text_hash == conversation_hash(THREE_TURNS)


class TestTokenCount:
    """The web process counts without torch; the count must be the renderer's, exactly."""

    @pytest.mark.parametrize("conv", [[USER], [SYSTEM, USER], THREE_TURNS])
    def test_equals_the_renderers_prompt_ids_with_a_chat_template(
        self, tiny_chat_model_path: Path, conv: list[dict[str, str]]
    ) -> None:
        from transformers import AutoTokenizer

        from trainer import render

        counter = tokens.conversation_counter(tiny_chat_model_path)
        assert counter is not None
        tok = AutoTokenizer.from_pretrained(tiny_chat_model_path)
        assert counter(conv) == len(render.prompt_ids(tok, conv))  # type: ignore[arg-type]

    def test_equals_the_renderers_prompt_ids_with_the_fallback_template(self, tmp_path: Path) -> None:
        from transformers import AutoTokenizer

        from trainer import render
        from trainer.models.demo import build_tokenizer, corpus_documents

        build_tokenizer(corpus_documents(), 400).save_pretrained(tmp_path)
        counter = tokens.conversation_counter(tmp_path)
        assert counter is not None
        tok = AutoTokenizer.from_pretrained(tmp_path)
        for conv in ([USER], THREE_TURNS):
            assert counter(conv) == len(render.prompt_ids(tok, conv))  # type: ignore[arg-type]

    def test_the_upload_uses_the_policys_template(self, session: Session, tiny_chat_model_path: Path) -> None:
        mv = make_model_version(session, name="tiny-chat")
        mv.path = str(tiny_chat_model_path)
        counter, how = tokens.token_counter(mv)
        assert how == "policy tokenizer and chat template"
        assert counter([USER]) > 10  # ChatML's default system message counts too
