"""Importing prompt files: every accepted format, and malformed files refused whole, each with
the file, line and field of every problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.prompts import upload
from app.prompts.models import Prompt, PromptSet
from app.runs.models import Job
from tests.prompts.conftest import parquet_bytes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(env="test", artifacts_dir=tmp_path / "artifacts", max_prompt_tokens=50)


def counts(session: Session) -> tuple[int, int, int]:
    return tuple(
        session.scalar(select(func.count()).select_from(t)) or 0  # type: ignore[return-value]
        for t in (PromptSet, Prompt, Job)
    )


# A chat template that writes the message text alone, so a count is the text's own length.
BARE_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def jl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def import_jl(
    session: Session,
    settings: Settings,
    *rows: object,
    name: str = "c",
    filename: str = "p.jsonl",
    **options: Any,
) -> PromptSet:
    """import_prompt_set of a JSON Lines file of these rows."""
    return upload.import_prompt_set(
        session=session, settings=settings, name=name, filename=filename, data=jl(*rows), **options
    )


class TestFormats:
    def test_json_lines_with_prompt_keeps_other_keys_as_metadata(
        self, session: Session, settings: Settings
    ) -> None:
        data = jl({"prompt": "Say hi.", "source": "a", "id": 7}, "", {"prompt": "Say bye."})
        ps = upload.import_prompt_set(
            session=session, settings=settings, name="jl", filename="p.jsonl", data=data
        )
        prompts = session.scalars(
            select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.id)
        ).all()
        assert [(p.text, p.meta, p.source_line) for p in prompts] == [
            ("Say hi.", {"source": "a", "id": 7}, 1),
            ("Say bye.", {}, 3),
        ]
        job = session.get(Job, ps.report["job_id"])
        assert job is not None and job.kind == "sample" and job.params == {"prompt_set_id": ps.id}
        assert ps.status == "sampling" and ps.k == 4 and ps.overlap == 1

    def test_json_lines_with_instruction_and_input(self, session: Session, settings: Settings) -> None:
        data = jl(
            {"instruction": "Translate to French.", "input": "Good morning", "lang": "fr"},
            {"instruction": "Name a colour."},
        )
        ps = upload.import_prompt_set(
            session=session, settings=settings, name="alpaca", filename="a.jsonl", data=data, k=6, overlap=3
        )
        texts = session.scalars(
            select(Prompt.text).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.id)
        ).all()
        assert texts == ["Translate to French.\n\nGood morning", "Name a colour."]
        assert (ps.k, ps.overlap) == (6, 3)

    def test_csv_with_prompt_column_bom_multiline_and_duplicates(
        self, session: Session, settings: Settings
    ) -> None:
        data = (
            '\ufeffprompt,topic\n"Write a poem\nabout rain",poetry\nSay hi.,greeting\n'
            "Say hi.,again\n  Say hi.  ,spaces\n"
        ).encode()
        ps = upload.import_prompt_set(
            session=session, settings=settings, name="csv", filename="p.csv", data=data
        )
        prompts = session.scalars(
            select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.id)
        ).all()
        assert [(p.text, p.meta, p.source_line) for p in prompts] == [
            ("Write a poem\nabout rain", {"topic": "poetry"}, 2),
            ("Say hi.", {"topic": "greeting"}, 4),
        ]
        assert ps.report["rows"] == 4 and ps.report["duplicates"] == 2
        assert ps.report["duplicate_lines"] == [5, 6]

    def test_parquet_with_prompt_column(self, session: Session, settings: Settings) -> None:
        data = parquet_bytes({"prompt": ["One?", "Two?", "One?"], "n": [1, 2, 3]})
        ps = upload.import_prompt_set(
            session=session, settings=settings, name="pq", filename="p.parquet", data=data, k=9
        )
        prompts = session.scalars(
            select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.id)
        ).all()
        assert [(p.text, p.meta, p.source_line) for p in prompts] == [
            ("One?", {"n": 1}, 1),
            ("Two?", {"n": 2}, 2),
        ]
        assert ps.report["duplicates"] == 1

    def test_format_can_be_given_when_the_name_says_nothing(
        self, session: Session, settings: Settings
    ) -> None:
        ps = upload.import_prompt_set(
            session=session,
            settings=settings,
            name="fmt",
            filename="upload",
            data=b"prompt\nHello\n",
            fmt="csv",
        )
        assert ps.report["imported"] == 1

    def test_the_policy_tokenizer_counts_tokens_when_it_is_at_hand(
        self, session: Session, settings: Settings, tmp_path: Path
    ) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
        folder = tmp_path / "pol"
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
        (folder / "chat_template.jinja").write_text(BARE_TEMPLATE)
        from tests.factories import make_model_version

        mv = make_model_version(session, name="chars")
        mv.path = str(folder)
        # 20 characters: 20 tokens with this tokenizer, over a limit of 10; 5 by approximation.
        with pytest.raises(upload.ImportRejected) as err:
            upload.import_prompt_set(
                session=session,
                settings=settings.model_copy(update={"max_prompt_tokens": 10}),
                name="t",
                filename="p.jsonl",
                data=jl({"prompt": "aaaaaaaaaaaaaaaaaaaa"}),
                policy_version_id=mv.id,
            )
        assert [str(p) for p in err.value.problems] == [
            "p.jsonl, line 1, field 'prompt': 20 tokens after the chat template, over the limit of 10 "
            "(RANKLAB_MAX_PROMPT_TOKENS)"
        ]


MALFORMED: list[tuple[str, str, bytes, dict[str, object], list[str]]] = [
    (
        "too big",
        "big.jsonl",
        jl({"prompt": "x" * 200}),
        {"max_mb": 0.0001},
        ["big.jsonl: the file is larger than the 0.0001 MB limit (RANKLAB_MAX_UPLOAD_MB)"],
    ),
    ("empty file", "e.jsonl", b"  \n", {}, ["e.jsonl: the file is empty"]),
    (
        "unknown type",
        "p.txt",
        b"hello",
        {},
        ["p.txt: unknown file type; name it .jsonl, .csv or .parquet (or choose the format)"],
    ),
    (
        "latin-1 jsonl",
        "l.jsonl",
        b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n',
        {},
        ["l.jsonl, line 2: not UTF-8: byte 0xe9 at column 16 (save the file as UTF-8)"],
    ),
    (
        "latin-1 csv",
        "l.csv",
        b"prompt\nna\xefve\n",
        {},
        ["l.csv, line 2: not UTF-8: byte 0xef at column 3 (save the file as UTF-8)"],
    ),
    (
        "csv named jsonl",
        "c.jsonl",
        b"prompt\nhello\n",
        {},
        [
            "c.jsonl, line 1: not valid JSON: Expecting value",
            "c.jsonl, line 2: not valid JSON: Expecting value",
        ],
    ),
    (
        "json array",
        "a.jsonl",
        b'[{"prompt": "a"}, {"prompt": "b"}]',
        {},
        ["a.jsonl, line 1: this is one JSON array, not JSON Lines: put one object per line"],
    ),
    (
        "parquet named jsonl",
        "p.jsonl",
        parquet_bytes({"prompt": ["a"]}),
        {},
        ["p.jsonl: this is a Parquet file, not JSON Lines"],
    ),
    (
        "text named parquet",
        "t.parquet",
        jl({"prompt": "a"}),
        {},
        ["t.parquet: not a Parquet file (it lacks the PAR1 marks at both ends)"],
    ),
    (
        "jsonl named csv",
        "j.csv",
        jl({"prompt": "a"}),
        {},
        ["j.csv, line 1: this looks like JSON Lines, not CSV"],
    ),
    (
        "csv without prompt column",
        "n.csv",
        b"text,id\nhello,1\n",
        {},
        ["n.csv, line 1, field 'prompt': no 'prompt' or 'messages' column (columns: 'text', 'id')"],
    ),
    (
        "csv wrong field count",
        "w.csv",
        b"prompt,id\nhello,1\nbye,2,3\n",
        {},
        ["w.csv, line 3: 3 fields, but the header has 2"],
    ),
    (
        "csv unclosed quote",
        "q.csv",
        b'prompt,id\nok,1\n"never closed,2\n',
        {},
        ["q.csv, line 3: not valid CSV: unexpected end of data"],
    ),
    (
        "csv empty prompt",
        "e.csv",
        b"prompt,id\n,1\n",
        {},
        ["e.csv, line 2, field 'prompt': empty or only whitespace"],
    ),
    (
        "missing prompt",
        "m.jsonl",
        jl({"prompt": "a"}, {"text": "b"}),
        {},
        ["m.jsonl, line 2, field 'prompt': missing: each row needs 'prompt' or 'messages'"],
    ),
    (
        "empty prompt",
        "e.jsonl",
        jl({"prompt": ""}),
        {},
        ["e.jsonl, line 1, field 'prompt': empty or only whitespace"],
    ),
    (
        "whitespace prompt",
        "w.jsonl",
        jl({"prompt": "a"}, {"prompt": " \t \n "}),
        {},
        ["w.jsonl, line 2, field 'prompt': empty or only whitespace"],
    ),
    (
        "number prompt",
        "n.jsonl",
        jl({"prompt": 42}),
        {},
        ["n.jsonl, line 1, field 'prompt': must be text, got a number"],
    ),
    ("null prompt", "n.jsonl", jl({"prompt": None}), {}, ["n.jsonl, line 1, field 'prompt': missing (null)"]),
    (
        "row not an object",
        "r.jsonl",
        jl({"prompt": "a"}, ["a", "b"]),
        {},
        ["r.jsonl, line 2: expected a JSON object, got a list"],
    ),
    (
        "broken json line",
        "b.jsonl",
        b'{"prompt": "a"}\n{"prompt": "b"\n',
        {},
        ["b.jsonl, line 2: not valid JSON: Expecting ',' delimiter"],
    ),
    (
        "empty instruction",
        "i.jsonl",
        jl({"instruction": " ", "input": "text"}),
        {},
        ["i.jsonl, line 1, field 'instruction': empty or only whitespace"],
    ),
    (
        "input not text",
        "i.jsonl",
        jl({"instruction": "Do it.", "input": 3}),
        {},
        ["i.jsonl, line 1, field 'input': must be text, got a number"],
    ),
    (
        "over the token limit",
        "t.jsonl",
        jl({"prompt": "word " * 60}),
        {},
        [
            "t.jsonl, line 1, field 'prompt': 79 tokens after the chat template, over the limit of 50 "
            "(RANKLAB_MAX_PROMPT_TOKENS)"
        ],
    ),
    (
        "parquet without prompt column",
        "x.parquet",
        parquet_bytes({"text": ["a"]}),
        {},
        ["x.parquet, field 'prompt': no 'prompt' or 'messages' column (columns: 'text')"],
    ),
    (
        "parquet numeric prompts",
        "x.parquet",
        parquet_bytes({"prompt": [1, 2]}),
        {},
        ["x.parquet, field 'prompt': column type is int64; it must be text"],
    ),
    (
        "parquet null prompt",
        "x.parquet",
        parquet_bytes({"prompt": ["a", None]}, pa.schema([("prompt", pa.string())])),
        {},
        ["x.parquet, row 2, field 'prompt': missing (null)"],
    ),
    ("header only", "h.csv", b"prompt,id\n", {}, ["h.csv: the file holds no prompts"]),
    (
        "k too small",
        "k.jsonl",
        jl({"prompt": "a"}),
        {"k": 3},
        ["k.jsonl, field 'k': K must be between 4 and 9, got 3"],
    ),
    (
        "k too large",
        "k.jsonl",
        jl({"prompt": "a"}),
        {"k": 10},
        ["k.jsonl, field 'k': K must be between 4 and 9, got 10"],
    ),
    (
        "overlap zero",
        "o.jsonl",
        jl({"prompt": "a"}),
        {"overlap": 0},
        ["o.jsonl, field 'overlap': overlap must be between 1 and 100, got 0"],
    ),
    (
        "temperature zero",
        "t.jsonl",
        jl({"prompt": "a"}),
        {"sampling": {"temperature": 0}},
        ["t.jsonl, field 'temperature': a number from 0.01 to 5, not 0"],
    ),
    (
        "unknown policy version",
        "v.jsonl",
        jl({"prompt": "a"}),
        {"policy_version_id": 999999},
        ["v.jsonl, field 'policy_version': no policy version with id 999999"],
    ),
    (
        "name taken",
        "n.jsonl",
        jl({"prompt": "a"}),
        {"name": "taken"},
        ["n.jsonl, field 'name': a prompt set named 'taken' already exists; choose another name"],
    ),
    # PostgreSQL cannot store NUL in text or JSON: refused with its place, not a database error.
    (
        "NUL in a prompt",
        "z.jsonl",
        jl({"prompt": "ok"}, {"prompt": "a\u0000b"}),
        {},
        ["z.jsonl, line 2, field 'prompt': contains a NUL character (\\u0000); remove it"],
    ),
    (
        "NUL in an input",
        "z.jsonl",
        jl({"instruction": "Do it.", "input": "a\u0000"}),
        {},
        ["z.jsonl, line 1, field 'input': contains a NUL character (\\u0000); remove it"],
    ),
    (
        "NUL in metadata",
        "z.jsonl",
        jl({"prompt": "a", "topic": ["x\u0000"]}),
        {},
        ["z.jsonl, line 1, field 'topic': contains a NUL character (\\u0000); remove it"],
    ),
    (
        "NUL in a CSV field",
        "z.csv",
        b"prompt,id\nok,1\nbad\x00,2\n",
        {},
        ["z.csv, line 3, field 'prompt': contains a NUL character (\\u0000); remove it"],
    ),
    (
        "NUL in the set name",
        "z.jsonl",
        jl({"prompt": "a"}),
        {"name": "round\x001"},
        ["z.jsonl, field 'name': contains a NUL character (\\u0000)"],
    ),
    (
        "NUL in a flag",
        "z.jsonl",
        jl({"prompt": "a"}),
        {"flags": ["rude\x00"]},
        ["z.jsonl, field 'flags': a flag contains a NUL character (\\u0000)"],
    ),
    (
        "several at once",
        "s.jsonl",
        jl({"prompt": ""}, {"x": 1}, "{oops"),
        {"k": 2},
        [
            "s.jsonl, field 'k': K must be between 4 and 9, got 2",
            "s.jsonl, line 3: not valid JSON: Expecting property name enclosed in double quotes",
            "s.jsonl, line 1, field 'prompt': empty or only whitespace",
            "s.jsonl, line 2, field 'prompt': missing: each row needs 'prompt' or 'messages'",
        ],
    ),
]


class TestMalformed:
    @pytest.mark.parametrize(
        ("case", "filename", "data", "opts", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED]
    )
    def test_refused_with_file_line_and_field_and_nothing_written(
        self,
        case: str,
        filename: str,
        data: bytes,
        opts: dict[str, object],
        expected: list[str],
        session: Session,
        settings: Settings,
    ) -> None:
        if opts.get("name") == "taken":
            import_jl(session, settings, {"prompt": "first"}, name="taken", filename="first.jsonl")
        before = counts(session)
        kw: dict[str, object] = {k: v for k, v in opts.items() if k not in ("max_mb", "name")}
        cfg = settings.model_copy(update={"max_upload_mb": opts["max_mb"]}) if "max_mb" in opts else settings
        with pytest.raises(upload.ImportRejected) as err:
            upload.import_prompt_set(
                session=session,
                settings=cfg,
                name=str(opts.get("name", "new")),
                filename=filename,
                data=data,
                **kw,
            )  # type: ignore[arg-type]
        assert [str(p) for p in err.value.problems] == expected
        session.flush()
        assert counts(session)[:2] == before[:2] and counts(session)[2] == before[2]

    def test_at_most_fifty_problems_are_listed(self, session: Session, settings: Settings) -> None:
        data = jl(*[{"prompt": ""} for _ in range(80)])
        with pytest.raises(upload.ImportRejected) as err:
            upload.import_prompt_set(
                session=session, settings=settings, name="many", filename="m.jsonl", data=data
            )
        assert len(err.value.problems) == 50 and err.value.truncated
        assert str(err.value.problems[-1]) == "m.jsonl, line 50, field 'prompt': empty or only whitespace"
        assert counts(session) == (0, 0, 0)


class TestFlags:
    def test_default_flags_or_the_given_ones(self, session: Session, settings: Settings) -> None:
        from app.prompts.models import DEFAULT_FLAGS

        a = import_jl(session, settings, {"prompt": "x"}, name="a", filename="a.jsonl")
        b = import_jl(
            session,
            settings,
            {"prompt": "x"},
            name="b",
            filename="b.jsonl",
            flags=[" is rude ", "", "is off topic"],
        )
        assert a.flags == DEFAULT_FLAGS and len(a.flags) == 11
        assert b.flags == ["is rude", "is off topic"]

    def test_a_repeated_flag_is_refused(self, session: Session, settings: Settings) -> None:
        with pytest.raises(upload.ImportRejected) as err:
            import_jl(session, settings, {"prompt": "x"}, filename="c.jsonl", flags=["rude", "rude"])
        assert [str(p) for p in err.value.problems] == [
            "c.jsonl, field 'flags': the same flag is listed twice"
        ]
        assert counts(session) == (0, 0, 0)


class TestPolicyContext:
    """A prompt must leave the policy room for max_new_tokens: a longer one would fail the job."""

    @pytest.fixture
    def small_context_policy(self, session: Session, tmp_path: Path) -> int:
        from tokenizers import Tokenizer, models, pre_tokenizers

        from tests.factories import make_model_version

        tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
        folder = tmp_path / "small"
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
        (folder / "chat_template.jinja").write_text(BARE_TEMPLATE)
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 16}))
        mv = make_model_version(session, name="small context")
        mv.path = str(folder)
        session.flush()
        return mv.id

    @staticmethod
    def under(policy_version_id: int, max_new_tokens: int) -> dict[str, Any]:
        """The import options that sample with this policy."""
        return {"sampling": {"max_new_tokens": max_new_tokens}, "policy_version_id": policy_version_id}

    def test_the_limit_is_the_context_less_max_new_tokens(
        self, session: Session, settings: Settings, small_context_policy: int
    ) -> None:
        with pytest.raises(upload.ImportRejected) as err:
            import_jl(
                session,
                settings,
                {"prompt": "a" * 12},
                {"prompt": "a" * 13},
                **self.under(small_context_policy, 4),
            )
        assert [str(p) for p in err.value.problems] == [
            "p.jsonl, line 2, field 'prompt': 13 tokens after the chat template, over the limit of 12 "
            "(the policy's 16 positions less max_new_tokens 4)"
        ]
        assert counts(session) == (0, 0, 0)
        ps = import_jl(session, settings, {"prompt": "a" * 12}, **self.under(small_context_policy, 4))
        assert ps.report["imported"] == 1

    def test_max_new_tokens_must_fit_the_context(
        self, session: Session, settings: Settings, small_context_policy: int
    ) -> None:
        with pytest.raises(upload.ImportRejected) as err:
            import_jl(session, settings, {"prompt": "a"}, **self.under(small_context_policy, 16))
        assert [p.field for p in err.value.problems] == ["max_new_tokens"]
