"""Phase 1 of `preferences import`: read the file (JSON Lines, gzipped or not, or Parquet), tell
its kind (HH-RLHF, TRL, ranklab rankings) and check every row into a Unit, or a RowError naming
its line and field. Nothing here touches the database."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.chat import (
    ChatError,
    Conversation,
    as_text,
    from_text,
    parse_conversation,
    split_hh_pair,
)
from app.ranking import dense_ranks, rank_error

KINDS = ("auto", "hh", "trl", "rankings")
MAX_LISTED = 200  # errors kept in full; the count is always exact


@dataclass(frozen=True)
class RowError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""  # line 0: the file as a whole
        return f"{where}{self.field}: {self.message}"


class ImportRefused(ValueError):
    def __init__(self, errors: list[RowError], total: int, message: str | None = None) -> None:
        self.errors = errors
        self.total = total
        if message is None:
            message = (
                "; ".join(map(str, errors))
                if errors and all(e.line == 0 for e in errors)
                else f"{total} invalid row(s)"
            ) + "; nothing was imported"
        super().__init__(message)


@dataclass
class Unit:
    """One input row, normalised: a ranking of some completions of one prompt."""

    line: int
    group: Any  # rows with the same group share one task (rankings exports); None: own task
    messages: Conversation  # the prompt, checked and normalised
    completions: list[tuple[Any, str, str | None]]  # (source id, text, source policy)
    ranks: list[int]
    ratings: list[int | None] = field(default_factory=list)
    flags: list[list[str]] = field(default_factory=list)
    labeler: str = ""
    notes: str = ""
    time_spent_ms: int | None = None
    guideline_version: int | None = None
    created_at: datetime | None = None
    skip_reason: str | None = None
    positions: list[int | None] = field(default_factory=list)  # shown order, when the source has it

    @property
    def prompt(self) -> str:
        return as_text(self.messages)


def completion_key(u: Unit, i: int) -> Any:
    """Completions with a source id are one completion across rows of a task; others are not."""
    cid = u.completions[i][0]
    return cid if cid is not None else ("row", u.line, i)


def read_rows(data: bytes, filename: str) -> list[tuple[int, Any]]:
    """(line or row number, parsed object or an Exception) for every row of the file."""
    name = filename.lower()
    if name.endswith(".parquet") or data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001
            raise ImportRefused([RowError(0, "file", f"not a readable Parquet file ({exc})")], 1) from exc
        return list(enumerate(table.to_pylist(), start=1))
    if name.endswith(".gz") or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ImportRefused([RowError(0, "file", f"not a readable gzip file ({exc})")], 1) from exc
    out: list[tuple[int, Any]] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            out.append((n, orjson.loads(raw)))
        except orjson.JSONDecodeError as exc:
            out.append((n, ValueError(f"not valid JSON ({exc.msg})")))
    return out


def detect_by_keys(rows: list[tuple[int, Any]], kinds: dict[str, str], expected: str) -> str:
    """The kind of the file: `kinds`' value for the first of its keys the first object row that
    holds any of them holds; none: refused, saying what rows were `expected`."""
    for _, obj in rows:
        if isinstance(obj, dict):
            for key, kind in kinds.items():
                if key in obj:
                    return kind
    raise ImportRefused([RowError(0, "file", f"no row looks like {expected}")], 1)


def detect_kind(rows: list[tuple[int, Any]]) -> str:
    return detect_by_keys(
        rows,
        {"completions": "rankings", "prompt": "trl", "chosen": "hh"},
        "HH-RLHF (chosen/rejected), TRL (prompt/chosen/rejected) or a ranklab rankings export",
    )


def _text(obj: dict[str, Any], key: str, line: int, errors: list[RowError]) -> str | None:
    value = obj.get(key)
    if value is None:
        errors.append(RowError(line, key, "missing"))
        return None
    if not isinstance(value, str):
        errors.append(RowError(line, key, f"must be a string, not {type(value).__name__}"))
        return None
    return value


def parse_hh(line: int, obj: dict[str, Any], errors: list[RowError]) -> Unit | None:
    chosen, rejected = _text(obj, "chosen", line, errors), _text(obj, "rejected", line, errors)
    if chosen is None or rejected is None:
        return None
    try:
        pair = split_hh_pair(chosen, rejected)
    except ChatError as e:
        errors.append(RowError(line, e.field, e.message))
        return None
    return Unit(
        line=line,
        group=None,
        messages=pair.prompt,
        completions=[(None, pair.chosen, None), (None, pair.rejected, None)],
        ranks=[1, 2],
    )


def _prompt(obj: dict[str, Any], line: int, errors: list[RowError]) -> Conversation | None:
    """A row's prompt: `messages` (a list of {role, content}) when the row has them, else
    `prompt` as text (one user message) or, TRL conversational, as a list of messages."""
    key = "messages" if obj.get("messages") is not None else "prompt"
    value = obj.get(key)
    try:
        if isinstance(value, list):
            return parse_conversation(value, field=key)
        if isinstance(value, str):
            return from_text(value)
    except ChatError as e:
        errors.append(RowError(line, e.field, e.message))
        return None
    _not_text_or_messages(value, line, key, errors)
    return None


def _not_text_or_messages(value: Any, line: int, key: str, errors: list[RowError]) -> None:
    """The error of a TRL field that is neither text nor messages."""
    problem = "missing" if value is None else "must be a string or a list of {role, content} messages"
    errors.append(RowError(line, key, problem))


def _reply(value: Any, line: int, key: str, errors: list[RowError]) -> str | None:
    """A TRL reply: text, or a list of messages whose last is the assistant's (the conversational
    shape, `[{"role": "assistant", "content": ...}]`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        last = value[-1]
        if last.get("role") != "assistant":
            errors.append(
                RowError(line, f"{key}[{len(value) - 1}].role", "the reply must be the assistant's")
            )
            return None
        if isinstance(last.get("content"), str):
            return str(last["content"])
        errors.append(RowError(line, f"{key}[{len(value) - 1}].content", "must be text"))
        return None
    _not_text_or_messages(value, line, key, errors)
    return None


def parse_trl(line: int, obj: dict[str, Any], errors: list[RowError]) -> Unit | None:
    n = len(errors)
    messages = _prompt(obj, line, errors)
    good, bad = (_reply(obj.get(k), line, k, errors) for k in ("chosen", "rejected"))
    if messages is None or good is None or bad is None or len(errors) > n:
        return None
    if good == bad:
        errors.append(RowError(line, "rejected", "the same text as chosen: no preference"))
        return None
    return Unit(
        line=line,
        group=None,
        messages=messages,
        completions=[(None, good, None), (None, bad, None)],
        ranks=[1, 2],
    )


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_ranking(line: int, obj: dict[str, Any], errors: list[RowError]) -> Unit | None:
    n = len(errors)
    messages = _prompt(obj, line, errors)
    skip = obj.get("skip_reason")
    if skip is not None and not isinstance(skip, str):
        errors.append(RowError(line, "skip_reason", "must be a string or null"))
    comps = obj.get("completions")
    if not isinstance(comps, list) or (len(comps) < 2 and not skip):
        errors.append(RowError(line, "completions", "must be a list of at least 2 completions"))
        comps = []
    out: list[tuple[Any, str, str | None]] = []
    ranks: list[int] = []
    ratings: list[int | None] = []
    flags: list[list[str]] = []
    positions: list[int | None] = []
    for i, c in enumerate(comps):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            errors.append(RowError(line, where, "must be an object"))
            continue
        if not isinstance(c.get("text"), str):
            errors.append(RowError(line, f"{where}.text", "missing or not a string"))
        rank, rating, fl = c.get("rank"), c.get("rating"), c.get("flags") or []
        problem = None if skip else rank_error(rank)
        if problem:
            errors.append(RowError(line, f"{where}.rank", problem))
        if rating is not None and not (_int(rating) and 1 <= rating <= 7):
            errors.append(RowError(line, f"{where}.rating", "must be an integer 1-7 or null"))
        if not (isinstance(fl, list) and all(isinstance(f, str) for f in fl)):
            errors.append(RowError(line, f"{where}.flags", "must be a list of strings"))
        policy = c.get("policy")
        out.append((c.get("completion_id"), c.get("text") or "", policy if isinstance(policy, str) else None))
        ranks.append(rank if _int(rank) else 0)  # type: ignore[arg-type]
        ratings.append(rating)
        flags.append(list(fl) if isinstance(fl, list) else [])
        positions.append(c["position"] if _int(c.get("position")) else None)
    ids = [cid for cid, _, _ in out if cid is not None]
    if len(set(ids)) != len(ids):
        errors.append(RowError(line, "completions", "a completion_id appears twice"))
    created = obj.get("created_at")
    created_at = None
    if created is not None:
        try:
            created_at = datetime.fromisoformat(str(created))
            created_at = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        except ValueError:
            errors.append(RowError(line, "created_at", "not an ISO-8601 time"))
    for key in ("time_spent_ms", "guideline_version", "task_id"):
        if obj.get(key) is not None and not _int(obj.get(key)):
            errors.append(RowError(line, key, "must be an integer or null"))
    if len(errors) > n or messages is None:
        return None
    return Unit(
        line=line,
        group=obj.get("task_id"),
        messages=messages,
        completions=out,
        ranks=[] if skip else dense_ranks(ranks),
        ratings=ratings,
        flags=flags,
        labeler=str(obj.get("labeler") or ""),
        notes=str(obj.get("notes") or ""),
        time_spent_ms=obj.get("time_spent_ms"),
        guideline_version=obj.get("guideline_version"),
        created_at=created_at,
        skip_reason=skip,
        positions=positions,
    )


PARSERS = {"hh": parse_hh, "trl": parse_trl, "rankings": parse_ranking}


def parse_with(
    data: bytes,
    filename: str,
    *,
    kind: str,
    detect: Callable[[list[tuple[int, Any]]], str],
    parsers: Mapping[str, Callable[[int, dict[str, Any], list[RowError]], Any]],
) -> tuple[str, list[Any], list[RowError], int]:
    """Every row of the file through the parser of its kind (`detect`ed when "auto"): (kind,
    what the parser made of the good rows, every row's errors, rows read). The file as a whole,
    a row that is not a JSON object and a NUL character are refused here for every kind."""
    rows = read_rows(data, filename)
    if not rows:
        raise ImportRefused([RowError(0, "file", "is empty")], 1)
    if kind == "auto":
        kind = detect(rows)
    if kind not in parsers:
        raise ImportRefused(
            [RowError(0, "format", f"one of {', '.join(['auto', *parsers])}, not {kind!r}")], 1
        )
    parser = parsers[kind]
    good: list[Any] = []
    errors: list[RowError] = []
    for line, obj in rows:
        if isinstance(obj, Exception):
            errors.append(RowError(line, "row", str(obj)))
        elif not isinstance(obj, dict):
            errors.append(RowError(line, "row", "must be a JSON object"))
        elif (where := _nul_at(obj)) is not None:
            errors.append(RowError(line, where, "contains a NUL character (\\u0000); remove it"))
        elif (made := parser(line, obj, errors)) is not None:
            good.append(made)
    return kind, good, errors, len(rows)


def parse(data: bytes, filename: str, *, kind: str = "auto") -> tuple[str, list[Unit], list[RowError], int]:
    """Every row checked: (kind, good units, errors, rows read)."""
    kind, units, errors, total = parse_with(data, filename, kind=kind, detect=detect_kind, parsers=PARSERS)
    if kind == "rankings":
        _check_groups(units, errors)
        bad = {e.line for e in errors}
        units = [u for u in units if u.line not in bad]
    return kind, units, errors, total


def _nul_at(value: Any, where: str = "") -> str | None:
    """Where a NUL character hides in a row (PostgreSQL cannot store one in text or JSON)."""
    if isinstance(value, str):
        return (where or "row") if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, v in items:
        here = f"{where}.{key}" if where else str(key)
        if "\x00" in here:
            return here.replace("\x00", "\\u0000")
        if (found := _nul_at(v, here)) is not None:
            return found
    return None


def _check_groups(units: list[Unit], errors: list[RowError]) -> None:
    """Rows of one source task must agree on the prompt; one labeler ranks a task once."""
    seen: dict[Any, Unit] = {}
    labelers: set[tuple[Any, str]] = set()
    for u in units:
        if u.group is None:
            continue
        first = seen.setdefault(u.group, u)
        if first.messages != u.messages:
            errors.append(RowError(u.line, "prompt", f"differs from line {first.line} of the same task_id"))
        key = (u.group, u.labeler)
        if key in labelers:
            errors.append(RowError(u.line, "labeler", f"{u.labeler!r} ranks task {u.group} twice"))
        labelers.add(key)


def refuse_unless_usable(
    units: Sequence[Any], errors: list[RowError], total: int, *, skip_invalid: bool
) -> None:
    """ImportRefused when a row is invalid (unless skip_invalid) or no row is valid."""
    if errors and not skip_invalid:
        raise ImportRefused(
            errors[:MAX_LISTED],
            len(errors),
            f"{len({e.line for e in errors})} invalid row(s) of {total}; nothing was imported",
        )
    if not units:
        raise ImportRefused(
            errors[:MAX_LISTED] or [RowError(0, "file", "no valid rows")], max(len(errors), 1)
        )
