"""Export formats: row builders (one annotation or task in, rows out) and streaming writers.

Writers take an iterator of row batches and yield bytes as they go, so the first bytes leave
at once and memory is bounded by one batch (one Parquet row group), whatever the data size.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from app.ranking import Item, ranking_to_pairs

SCHEMA_VERSION = 1
FORMATS = ("comparisons", "trl", "rankings", "groups", "sft")
FILE_TYPES = ("jsonl", "jsonl.gz", "parquet")
MEDIA_TYPES = {
    "jsonl": "application/x-ndjson",
    "jsonl.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
}


@dataclass(slots=True)
class ItemRecord:
    completion_id: int
    text: str
    rank: int | None
    rating: int | None
    flags: list[str]
    position: int | None
    model_version_id: int | None
    policy: str | None


@dataclass(slots=True)
class AnnotationRecord:
    """One annotation with what every format needs, as the query streams it."""

    annotation_id: int
    task_id: int
    prompt_set: str
    prompt_id: int
    prompt: str  # the conversation's readable text (app.chat.as_text)
    prompt_messages: list[dict[str, str]] | None  # the conversation; None: `prompt` as one user message
    labeler: str
    guideline_version: int | None
    created_at: datetime
    time_spent_ms: int | None
    notes: str
    skip_reason: str | None
    inconsistency_confirmed: bool
    split: str
    items: list[ItemRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RowOptions:
    conversational: bool = False  # trl: lists of {"role", "content"} messages
    margin: Literal["none", "rank", "rating"] = "none"  # trl: add a `margin` column


# --- row builders ---------------------------------------------------------------------------


def comparison_rows(rec: AnnotationRecord) -> list[dict[str, Any]]:
    """All C(K,2) pairs, ties kept and marked (for a tie, `chosen` is merely the first listed)."""
    by_id = {it.completion_id: it for it in rec.items}
    items = [
        Item(it.completion_id, it.rank, it.rating, it.position, it.model_version_id)
        for it in rec.items
        if it.rank is not None
    ]
    created = rec.created_at.isoformat()
    rows = []
    for p in ranking_to_pairs(items, keep_ties=True):
        c, r = by_id[p.chosen.completion_id], by_id[p.rejected.completion_id]
        rows.append(
            {
                "split": rec.split,
                "prompt_set": rec.prompt_set,
                "task_id": rec.task_id,
                "annotation_id": rec.annotation_id,
                "prompt_id": rec.prompt_id,
                "prompt": rec.prompt,
                "messages": messages_of(rec),
                "chosen": c.text,
                "chosen_completion_id": c.completion_id,
                "chosen_rank": c.rank,
                "chosen_rating": c.rating,
                "chosen_position": c.position,
                "chosen_policy": c.policy,
                "rejected": r.text,
                "rejected_completion_id": r.completion_id,
                "rejected_rank": r.rank,
                "rejected_rating": r.rating,
                "rejected_position": r.position,
                "rejected_policy": r.policy,
                "tie": p.tie,
                "rank_gap": p.rank_gap,
                "rating_diff": p.rating_diff,
                "labeler": rec.labeler,
                "guideline_version": rec.guideline_version,
                "created_at": created,
                "time_spent_ms": rec.time_spent_ms,
            }
        )
    return rows


def messages_of(rec: AnnotationRecord) -> list[dict[str, str]]:
    """The prompt conversation, untemplated (TRL's conversational `prompt`, the `messages` column)."""
    return rec.prompt_messages or [{"role": "user", "content": rec.prompt}]


def trl_rows(rec: AnnotationRecord, opts: RowOptions) -> list[dict[str, Any]]:
    """TRL's preference columns; ties are left out (no preference to learn from)."""
    by_id = {it.completion_id: it for it in rec.items}
    items = [Item(it.completion_id, it.rank, it.rating) for it in rec.items if it.rank is not None]
    rows = []
    for p in ranking_to_pairs(items):
        c, r = by_id[p.chosen.completion_id].text, by_id[p.rejected.completion_id].text
        row: dict[str, Any]
        if opts.conversational:
            row = {
                "prompt": messages_of(rec),
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
        else:
            row = {"prompt": rec.prompt, "chosen": c, "rejected": r}
        if opts.margin == "rank":
            row["margin"] = float(p.rank_gap)
        elif opts.margin == "rating":
            row["margin"] = float(p.rating_diff or 0)
        rows.append(row)
    return rows


def ranking_row(rec: AnnotationRecord) -> dict[str, Any]:
    return {
        "annotation_id": rec.annotation_id,
        "task_id": rec.task_id,
        "prompt_set": rec.prompt_set,
        "prompt_id": rec.prompt_id,
        "prompt": rec.prompt,
        "messages": messages_of(rec),
        "split": rec.split,
        "labeler": rec.labeler,
        "guideline_version": rec.guideline_version,
        "created_at": rec.created_at.isoformat(),
        "time_spent_ms": rec.time_spent_ms,
        "skip_reason": rec.skip_reason,
        "notes": rec.notes,
        "inconsistency_confirmed": rec.inconsistency_confirmed,
        "completions": [
            {
                "completion_id": it.completion_id,
                "text": it.text,
                "policy": it.policy,
                "rank": it.rank,
                "rating": it.rating,
                "flags": list(it.flags),
                "position": it.position,
            }
            for it in rec.items
        ],
    }


def group_row(recs: list[AnnotationRecord]) -> dict[str, Any]:
    """One task with its completions and every labeler's ranking, aligned with `completions`."""
    first = recs[0]
    comps: dict[int, ItemRecord] = {}
    for rec in recs:
        for it in rec.items:
            comps.setdefault(it.completion_id, it)
    order = sorted(comps)
    rankings = []
    for rec in recs:
        mine = {it.completion_id: it for it in rec.items}
        rankings.append(
            {
                "annotation_id": rec.annotation_id,
                "labeler": rec.labeler,
                "ranks": [mine[c].rank if c in mine else None for c in order],
                "ratings": [mine[c].rating if c in mine else None for c in order],
                "flags": [list(mine[c].flags) if c in mine else [] for c in order],
                "guideline_version": rec.guideline_version,
                "created_at": rec.created_at.isoformat(),
                "time_spent_ms": rec.time_spent_ms,
            }
        )
    return {
        "task_id": first.task_id,
        "prompt_set": first.prompt_set,
        "prompt_id": first.prompt_id,
        "prompt": first.prompt,
        "messages": messages_of(first),
        "split": first.split,
        "completions": [
            {"completion_id": c, "text": comps[c].text, "policy": comps[c].policy} for c in order
        ],
        "rankings": rankings,
    }


# --- Parquet schemas ------------------------------------------------------------------------

_MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


_TYPES = {
    "str": pa.string(),
    "i64": pa.int64(),
    "i32": pa.int32(),
    "bool": pa.bool_(),
    "messages": _MSG,
    "strs": pa.list_(pa.string()),
    "i32s": pa.list_(pa.int32()),
}


def _fields(spec: str, **more: pa.DataType) -> list[tuple[str, pa.DataType]]:
    """Columns written "name type, ...": type one of _TYPES or a name in `more`."""
    types = {**_TYPES, **more}
    return [(name, types[kind]) for name, kind in (field.split() for field in spec.split(","))]


def schema_for(fmt: str, opts: RowOptions) -> pa.Schema:
    if fmt == "comparisons":
        side = [
            ("", pa.string()),
            *_fields("_completion_id i64, _rank i32, _rating i32, _position i32, _policy str"),
        ]
        return pa.schema(
            [
                *_fields(
                    "split str, prompt_set str, task_id i64, annotation_id i64, prompt_id i64, prompt str, "
                    "messages messages"
                ),
                *[("chosen" + n, t) for n, t in side],
                *[("rejected" + n, t) for n, t in side],
                *_fields(
                    "tie bool, rank_gap i32, rating_diff i32, labeler str, guideline_version i32, "
                    "created_at str, time_spent_ms i64"
                ),
            ]
        )
    if fmt == "trl":
        t = _MSG if opts.conversational else pa.string()
        fields = [("prompt", t), ("chosen", t), ("rejected", t)]
        if opts.margin != "none":
            fields.append(("margin", pa.float64()))
        return pa.schema(fields)
    if fmt == "rankings":
        comp = _fields(
            "completion_id i64, text str, policy str, rank i32, rating i32, flags strs, position i32"
        )
        return pa.schema(
            _fields(
                "annotation_id i64, task_id i64, prompt_set str, prompt_id i64, prompt str, "
                "messages messages, split str, labeler str, guideline_version i32, created_at str, "
                "time_spent_ms i64, skip_reason str, notes str, inconsistency_confirmed bool, "
                "completions completions",
                completions=pa.list_(pa.struct(comp)),
            )
        )
    if fmt == "groups":
        comp = _fields("completion_id i64, text str, policy str")
        ranking = _fields(
            "annotation_id i64, labeler str, ranks i32s, ratings i32s, flags flags, guideline_version i32, "
            "created_at str, time_spent_ms i64",
            flags=pa.list_(pa.list_(pa.string())),
        )
        return pa.schema(
            _fields(
                "task_id i64, prompt_set str, prompt_id i64, prompt str, messages messages, split str, "
                "completions completions, rankings rankings",
                completions=pa.list_(pa.struct(comp)),
                rankings=pa.list_(pa.struct(ranking)),
            )
        )
    if fmt == "sft":  # app/exports/sft.py writes these rows
        return pa.schema(
            _fields(
                "messages messages, prompt_set str, prompt_id i64, task_id i64, annotation_id i64, "
                "demonstration_id i64, split str, labeler str, guideline_version i32, created_at str, "
                "time_spent_ms i64, draft_used bool, edit_distance i32, review_status str, "
                "edited_by_reviewer bool"
            )
        )
    raise ValueError(f"format: one of {', '.join(FORMATS)}, not {fmt!r}")


def columns(fmt: str, opts: RowOptions) -> list[str]:
    return list(schema_for(fmt, opts).names)


# --- writers --------------------------------------------------------------------------------


# Rows, or already encoded by app.exports.encode.
Batch: TypeAlias = list[dict[str, Any]] | bytes | pa.Table


def write_jsonl(batches: Iterable[Batch], *, gz: bool = False) -> Iterator[bytes]:
    # zlib's gzip wrapper writes mtime 0, so the same data always gives the same bytes (sha256).
    comp = zlib.compressobj(6, zlib.DEFLATED, 31) if gz else None
    for batch in batches:
        if not len(batch):
            continue
        chunk = batch if isinstance(batch, bytes) else b"\n".join(map(orjson.dumps, batch)) + b"\n"
        if comp is not None:
            chunk = comp.compress(chunk)
        if chunk:
            yield chunk
    if comp is not None:
        yield comp.flush()


class _Drain:
    """A write-only file for ParquetWriter whose bytes are taken away after each row group."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        b = bytes(data)
        self.parts.append(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def write_parquet(batches: Iterable[Batch], schema: pa.Schema) -> Iterator[bytes]:
    """One row group per batch; the file is valid (and readable by `datasets`) when done."""
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        for batch in batches:
            if isinstance(batch, pa.Table):
                table = batch
            elif isinstance(batch, list) and batch:
                table = pa.Table.from_pydict(
                    {
                        name: pa.array([row[name] for row in batch], type=schema.field(name).type)
                        for name in schema.names
                    },
                    schema=schema,
                )
            else:
                continue
            if table.num_rows:
                writer.write_table(table)
            data = sink.take()
            if data:
                yield data
    finally:
        writer.close()
    yield sink.take()


def write(batches: Iterable[Batch], *, file_type: str, schema: pa.Schema) -> Iterator[bytes]:
    if file_type == "parquet":
        return write_parquet(batches, schema)
    if file_type in ("jsonl", "jsonl.gz"):
        return write_jsonl(batches, gz=file_type == "jsonl.gz")
    raise ValueError(f"file type: one of {', '.join(FILE_TYPES)}, not {file_type!r}")
