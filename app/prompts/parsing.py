"""Reading uploaded prompt files: JSON Lines, CSV and Parquet, with every problem located.

A prompt is a conversation (app/chat.py). A row gives it as `messages` (the OpenAI / TRL shape;
in CSV and Parquet a column of JSON text or a list column), as `prompt` (one user message,
optionally with `system`), as `instruction` (+ `input`), or as HH-RLHF dialogue text in
`prompt` ("Human: ... Assistant: ..." turns, split into messages).

Nothing here touches the database. `parse_prompt_file` returns the unique prompts (duplicates
found on the normalised conversation) and a list of problems, each naming the file, the line
(the row, for Parquet) and the field; the caller imports nothing when there is any problem. Up
to MAX_PROBLEMS are collected, so a user fixes a file in one pass rather than one per upload.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import chat
from app.chat import Conversation
from app.errors import Problem

__all__ = ["Problem"]  # the one located problem (app/errors.py), re-exported for the upload code

MAX_PROBLEMS = 50
FORMATS = ("jsonl", "csv", "parquet")
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Keys that make the prompt itself; every other key or column is kept as metadata.
TEXT_KEYS = ("messages", "system", "prompt", "instruction", "input")

# How many positions a conversation takes in front of the model (after its chat template).
TokenCounter = Callable[[Conversation], int]


def approx_tokens(conv: Conversation) -> int:
    """Used when the policy's tokenizer is not at hand: per turn, never below the word count and
    about four characters per token for text without spaces (what BPE tokenizers average),
    plus four for the turn's template markers."""
    return sum(max(len(m["content"].split()), math.ceil(len(m["content"]) / 4)) + 4 for m in conv)


@dataclass
class ParsedPrompt:
    line: int
    messages: Conversation
    meta: dict[str, Any]
    hash: str  # app.chat.conversation_hash

    @property
    def text(self) -> str:
        return chat.as_text(self.messages)


@dataclass
class ParseResult:
    prompts: list[ParsedPrompt] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    duplicate_lines: list[int] = field(default_factory=list)
    truncated: bool = False  # more problems existed than were kept

    @property
    def ok(self) -> bool:
        return not self.problems


class _Collector:
    def __init__(self, filename: str, unit: str = "line") -> None:
        self.filename = filename
        self.unit = unit
        self.result = ParseResult()
        self.seen: dict[str, int] = {}

    def problem(self, line: int | None, fld: str | None, message: str) -> None:
        if len(self.result.problems) < MAX_PROBLEMS:
            self.result.problems.append(Problem(self.filename, line, fld, message, self.unit))
        else:
            self.result.truncated = True

    @property
    def full(self) -> bool:
        return self.result.truncated


def detect_format(filename: str, fmt: str | None) -> str | None:
    if fmt:
        return fmt.lower() if fmt.lower() in FORMATS else None
    lower = filename.lower()
    for ext, name in EXTENSIONS.items():
        if lower.endswith(ext):
            return name
    return None


def parse_prompt_file(
    *,
    filename: str,
    data: bytes,
    fmt: str | None = None,
    max_bytes: int,
    max_tokens: int,
    count_tokens: TokenCounter = approx_tokens,
    limit_name: str = "RANKLAB_MAX_PROMPT_TOKENS",
) -> ParseResult:
    out = _Collector(filename)
    kind = detect_format(filename, fmt)
    if kind is None:
        out.problem(
            None,
            None,
            f"unknown format {fmt!r}; use jsonl, csv or parquet"
            if fmt
            else "unknown file type; name it .jsonl, .csv or .parquet (or choose the format)",
        )
        return out.result
    if len(data) > max_bytes:
        out.problem(
            None, None, f"the file is larger than the {max_bytes / 1e6:g} MB limit (RANKLAB_MAX_UPLOAD_MB)"
        )
        return out.result
    if not data.strip():
        out.problem(None, None, "the file is empty")
        return out.result
    if kind == "parquet":
        out.unit = "row"
        rows = _parquet_rows(data, out)
    else:
        if data.startswith(b"PAR1"):
            out.problem(None, None, f"this is a Parquet file, not {_label(kind)}")
            return out.result
        text = _decode(data, out)
        if text is None:
            return out.result
        rows = _jsonl_rows(text, out) if kind == "jsonl" else _csv_rows(text, out)
    for line, record in rows:
        out.result.rows += 1
        _take(line, record, out, max_tokens=max_tokens, count_tokens=count_tokens, limit_name=limit_name)
        if out.full:
            break
    if out.result.rows == 0 and not out.result.problems:
        out.problem(None, None, "the file holds no prompts")
    return out.result


def _label(kind: str) -> str:
    return {"jsonl": "JSON Lines", "csv": "CSV", "parquet": "Parquet"}[kind]


def _decode(data: bytes, out: _Collector) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        out.problem(
            line, None, f"not UTF-8: byte 0x{data[exc.start]:02x} at column {column} (save the file as UTF-8)"
        )
        return None


def _jsonl_rows(text: str, out: _Collector) -> list[tuple[int, dict[str, Any]]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            out.problem(1, None, "this is one JSON array, not JSON Lines: put one object per line")
            return []
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            out.problem(number, None, f"not valid JSON: {message}")
        else:
            if isinstance(value, dict):
                rows.append((number, value))
            else:
                out.problem(number, None, f"expected a JSON object, got {_type_name(value)}")
        if out.full:
            break
    return rows


def _csv_rows(text: str, out: _Collector) -> list[tuple[int, dict[str, Any]]]:
    if text.lstrip().startswith("{"):
        out.problem(1, None, "this looks like JSON Lines, not CSV")
        return []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        out.problem(1, None, f"not valid CSV: {exc}" if isinstance(exc, csv.Error) else "no header")
        return []
    header = [h.strip() for h in header]
    if "prompt" not in header and "messages" not in header:
        out.problem(
            1,
            "prompt",
            "no 'prompt' or 'messages' column (columns: " + ", ".join(repr(h) for h in header) + ")",
        )
        return []
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            out.problem(start, None, f"not valid CSV: {exc}")
            break
        if values:  # a truly empty line is skipped; a line of blanks is an empty prompt
            if len(values) != len(header):
                out.problem(start, None, f"{len(values)} fields, but the header has {len(header)}")
            else:
                rows.append((start, dict(zip(header, values, strict=True))))
        start = reader.line_num + 1
        if out.full:
            break
    return rows


def _parquet_rows(data: bytes, out: _Collector) -> list[tuple[int, dict[str, Any]]]:
    if not (data.startswith(b"PAR1") and data.endswith(b"PAR1")):
        out.problem(None, None, "not a Parquet file (it lacks the PAR1 marks at both ends)")
        return []
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        out.problem(None, None, f"could not read this Parquet file: {exc}")
        return []
    names = table.column_names
    if not {"prompt", "instruction", "messages"} & set(names):
        out.problem(
            None,
            "prompt",
            "no 'prompt' or 'messages' column (columns: " + ", ".join(repr(n) for n in names) + ")",
        )
        return []
    for name in ("prompt", "instruction", "input", "system"):
        if name in names and not (
            pa.types.is_string(table.schema.field(name).type)
            or pa.types.is_large_string(table.schema.field(name).type)
            or pa.types.is_null(table.schema.field(name).type)
        ):
            out.problem(None, name, f"column type is {table.schema.field(name).type}; it must be text")
    if out.result.problems:
        return []
    return [(i, row) for i, row in enumerate(table.to_pylist(), start=1)]


def _take(
    line: int,
    record: dict[str, Any],
    out: _Collector,
    *,
    max_tokens: int,
    count_tokens: TokenCounter,
    limit_name: str = "RANKLAB_MAX_PROMPT_TOKENS",
) -> None:
    try:
        conv, fld = _conversation(record)
        check_stored(conv)
    except chat.ChatError as exc:
        out.problem(line, exc.field, exc.message)
        return
    meta = {k: _jsonable(v) for k, v in record.items() if k not in TEXT_KEYS}
    for key, value in meta.items():
        if "\x00" in key or "\\u0000" in json.dumps(value):
            out.problem(line, key.replace("\x00", "\\u0000"), NUL)
            return
    try:
        check_tokens(conv, field=fld, max_tokens=max_tokens, count_tokens=count_tokens, limit_name=limit_name)
    except chat.ChatError as exc:
        out.problem(line, exc.field, exc.message)
        return
    digest = chat.conversation_hash(conv)
    if digest in out.seen:
        out.result.duplicates += 1
        if len(out.result.duplicate_lines) < 20:
            out.result.duplicate_lines.append(line)
        return
    out.seen[digest] = line
    out.result.prompts.append(ParsedPrompt(line=line, messages=conv, meta=meta, hash=digest))


def check_stored(conv: Conversation, *, field: str = "messages") -> None:
    """What PostgreSQL can store: no NUL in any message (ChatError naming `field[i].content`)."""
    for i, m in enumerate(conv):
        if "\x00" in m["content"]:
            raise chat.ChatError(f"{field}[{i}].content", NUL)


def check_tokens(
    conv: Conversation,
    *,
    field: str,
    max_tokens: int,
    count_tokens: TokenCounter,
    limit_name: str = "RANKLAB_MAX_PROMPT_TOKENS",
) -> None:
    """The token limit after the chat template (ChatError naming `field`)."""
    n_tokens = count_tokens(conv)
    if n_tokens > max_tokens:
        raise chat.ChatError(
            field, f"{n_tokens} tokens after the chat template, over the limit of {max_tokens} ({limit_name})"
        )


def _conversation(record: dict[str, Any]) -> tuple[Conversation, str]:
    """The row's conversation and the field its errors name; raises ChatError."""
    if "messages" in record and record["messages"] is not None:
        value = record["messages"]
        if isinstance(value, str):  # a CSV cell, or a Parquet text column: JSON text
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise chat.ChatError("messages", f"not valid JSON: {exc}") from None
        return chat.parse_conversation(value, field="messages"), "messages"
    if "prompt" in record:
        fld, text, extra = "prompt", record["prompt"], None
    elif "instruction" in record:
        fld, text, extra = "instruction", record["instruction"], record.get("input")
    else:
        raise chat.ChatError("prompt", "missing: each row needs 'prompt' or 'messages'")
    if text is None:
        raise chat.ChatError(fld, "missing (null)")
    if not isinstance(text, str):
        raise chat.ChatError(fld, f"must be text, got {_type_name(text)}")
    if extra is not None and not isinstance(extra, str):
        raise chat.ChatError("input", f"must be text, got {_type_name(extra)}")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise chat.ChatError("system", f"must be text, got {_type_name(system)}")
    for name, value in ((fld, text), ("input", extra), ("system", system)):
        if value and "\x00" in value:
            raise chat.ChatError(name, NUL)
    if _HH.match(text) and "\n\nAssistant:" in text:
        turns = chat.split_hh(text)
        if system and system.strip():
            turns = [{"role": "system", "content": system}, *turns]
        return chat.parse_conversation(turns, field=fld), fld
    if not text.strip():
        raise chat.ChatError(fld, "empty or only whitespace")
    full = text.strip()
    if extra and extra.strip():
        full = f"{full}\n\n{extra.strip()}"
    return chat.from_text(full, system=system if system and system.strip() else None), fld


# PostgreSQL cannot store a NUL character in text or JSON: refused here, with its place.
NUL = "contains a NUL character (\\u0000); remove it"
# HH-RLHF dialogue text: the first turn is the Human's (a prompt that merely mentions "Human:"
# later on is plain text).
_HH = re.compile(r"\s*(\n\n)?Human:")


def _type_name(value: object) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
        str: "text",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
