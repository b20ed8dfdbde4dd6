"""Records into rows of one format, in batches counted as they go: the pair formats as JSON
Lines bytes or Arrow tables (app.exports.encode), rankings and groups as row dicts, sft from its
own query (app.exports.sft)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.exports import encode, formats
from app.exports.filters import ExportError, Filters
from app.exports.formats import AnnotationRecord, RowOptions
from app.exports.records import BATCH_ANNOTATIONS, Counts, iter_records
from app.exports.sft import iter_sft_rows
from app.ranking import ordered_pairs


@dataclass
class Request:
    """What one export is asked for: the format, the file type, which annotations, the row
    options, and whether labelers go by their usernames."""

    fmt: str
    file_type: str
    filters: Filters
    opts: RowOptions
    real_names: bool


def iter_rows(
    session: Session,
    request: Request,
    *,
    secret: str,
    counts: Counts | None = None,
    batch_annotations: int = BATCH_ANNOTATIONS,
) -> Iterator[formats.Batch]:
    """Batches of the request's format, counted into `counts` as they go: JSON Lines bytes or
    Arrow tables for the pair formats (see app.exports.encode), lists of row dicts for the others."""
    fmt, file_type, opts = request.fmt, request.file_type, request.opts
    if fmt not in formats.FORMATS:
        raise ExportError("format", f"one of {', '.join(formats.FORMATS)}, not {fmt!r}")
    counts = counts if counts is not None else Counts()
    if fmt == "sft":  # demonstrations, not annotations with items: their own query
        yield from iter_sft_rows(
            session=session,
            filters=request.filters,
            secret=secret,
            real_names=request.real_names,
            counts=counts,
            batch_size=batch_annotations,
        )
        return
    records = iter_records(
        session=session,
        filters=request.filters,
        secret=secret,
        real_names=request.real_names,
        by_task=fmt == "groups",
        with_flags=fmt in ("rankings", "groups"),
    )

    def note(rec: AnnotationRecord, n_rows: int) -> None:
        counts.annotations += 1
        counts.rows += n_rows
        counts.by_split[rec.split] += n_rows
        counts.tasks.add(rec.task_id)
        counts.prompts.add(rec.prompt_id)
        strict, ties, _ = ordered_pairs([it.rank for it in rec.items if it.rank is not None])
        counts.pairs += strict
        counts.ties += ties

    if fmt in ("comparisons", "trl") and file_type == "parquet":
        table = encode.ArrowPairs(fmt, opts)
        limit = max(1, batch_annotations // 10)  # a small first row group: the first bytes leave sooner
        for rec in records:
            note(rec, table.add(rec))
            if len(table.recs) >= limit:
                yield table.table()
                table, limit = encode.ArrowPairs(fmt, opts), batch_annotations
        if table.recs:
            yield table.table()
        return
    if fmt in ("comparisons", "trl"):
        chunk: list[bytes] = []
        for rec in records:
            data, n = encode.comparison_lines(rec) if fmt == "comparisons" else encode.trl_lines(rec, opts)
            note(rec, n)
            chunk.append(data)
            if len(chunk) >= batch_annotations // 4:  # JSON Lines: smaller pieces leave sooner
                yield b"".join(chunk)
                chunk = []
        if chunk:
            yield b"".join(chunk)
        return

    batch: list[dict[str, Any]] = []
    group: list[AnnotationRecord] = []

    def close_group() -> None:
        batch.append(formats.group_row(group))
        for g in group:
            note(g, 0)
        counts.rows += 1
        counts.by_split[group[0].split] += 1

    for rec in records:
        if fmt == "rankings":
            batch.append(formats.ranking_row(rec))
            note(rec, 1)
        else:
            if group and rec.task_id != group[0].task_id:
                close_group()
                group = []
            if rec.items:
                group.append(rec)
        if len(batch) >= batch_annotations:
            yield batch
            batch = []
    if group:
        close_group()
    if batch:
        yield batch
