"""One export: checked whole before its first byte, streamed from one snapshot, hashed as it
goes, and described by a manifest (sha256, counts, filters, split).

Nothing here loads a whole dataset: the records (app.exports.records) come a page at a time,
become rows of the format (app.exports.rows) and are written batch by batch (formats.write).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.db import utcnow
from app.exports import formats
from app.exports.filters import ExportError, Filters, filters_from_params
from app.exports.formats import RowOptions
from app.exports.records import BATCH_ANNOTATIONS, Counts
from app.exports.rows import Request, iter_rows
from app.exports.sft import check_filters
from app.ranking import SPLITS, split_fractions_error


class HashingStream:
    """Wraps a byte stream, keeping its sha256 and size for the manifest."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


@dataclass
class Export(Request):
    """One export: iterate `stream` for the bytes, then call `manifest()`."""

    counts: Counts = field(default_factory=Counts)
    started_at: datetime = field(default_factory=utcnow)
    stream: HashingStream = field(init=False)

    def manifest(self, *, filename: str | None = None) -> dict[str, Any]:
        return {
            "schema_version": formats.SCHEMA_VERSION,
            "format": self.fmt,
            "file_type": self.file_type,
            "filename": filename,
            "columns": formats.columns(self.fmt, self.opts),
            "options": {
                "conversational": self.opts.conversational,
                "margin": self.opts.margin,
                "real_names": self.real_names,
            },
            "filters": self.filters.describe(),
            "counts": self.counts.as_dict(),
            "sha256": self.stream.sha.hexdigest(),
            "bytes": self.stream.size,
            "exported_at": self.started_at.isoformat(),
            "split": {
                "by": "sha256(seed, prompt text)",
                "seed": self.filters.split_seed,
                "fractions": dict(zip(SPLITS, self.filters.split_fractions, strict=True)),
            },
        }


def export(
    *,
    session_factory: Callable[[], Session],
    fmt: str,
    file_type: str,
    filters: Filters,
    opts: RowOptions,
    secret: str,
    real_names: bool = False,
    batch_annotations: int = BATCH_ANNOTATIONS,
) -> Export:
    """An export ready to stream. Its session opens when the first bytes are asked for and
    closes when the stream ends, so a web response can outlive the request's session."""
    if fmt not in formats.FORMATS:
        raise ExportError("format", f"one of {', '.join(formats.FORMATS)}, not {fmt!r}")
    if file_type not in formats.FILE_TYPES:
        raise ExportError("file", f"one of {', '.join(formats.FILE_TYPES)}, not {file_type!r}")
    if filters.split is not None and filters.split not in SPLITS:
        raise ExportError("split", f"one of {', '.join(SPLITS)}, not {filters.split!r}")
    if fmt == "sft":
        check_filters(filters)
    problem = split_fractions_error(filters.split_fractions)
    if problem:
        # Checked here, not mid-stream: a bad one would fail after the first bytes had left.
        raise ExportError("fractions", f"split fractions: {problem}")
    ex = Export(fmt=fmt, file_type=file_type, filters=filters, opts=opts, real_names=real_names)
    schema = formats.schema_for(fmt, opts)

    def chunks() -> Iterator[bytes]:
        with session_factory() as session:
            _snapshot(session)
            batches = iter_rows(
                session, ex, secret=secret, counts=ex.counts, batch_annotations=batch_annotations
            )
            yield from formats.write(batches, file_type=file_type, schema=schema)

    ex.stream = HashingStream(chunks())
    return ex


def training_rows(
    *, sessions: Callable[[], Session], params: Mapping[str, Any], fmt: str, secret: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What a training job reads: the `fmt` export (JSON Lines) of the filters in `params` (see
    filters_from_params), parsed back row by row, and its manifest, whose sha256 is that of
    `ranklab export FMT --out FILE.jsonl` with the same filters. `secret` names labelers as the
    export does (it is hashed into the rows, so it must be the export's for the sha256 to agree)."""
    with sessions() as session:
        filters = filters_from_params(session=session, params=params, secret=secret)
    ex = export(
        session_factory=sessions,
        fmt=fmt,
        file_type="jsonl",
        filters=filters,
        opts=RowOptions(),
        secret=secret,
    )
    rows = list(_json_lines(ex.stream))
    return rows, ex.manifest()


def _json_lines(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield orjson.loads(line)
    if rest.strip():
        yield orjson.loads(rest)


def _snapshot(session: Session) -> None:
    """On PostgreSQL, read every page of an export from one snapshot (REPEATABLE READ), so
    labels submitted meanwhile never make a file, its counts and its sha256 disagree. SQLite
    gives one snapshot per transaction anyway. A session bound to a connection that is
    already in a transaction (tests) keeps that transaction's level."""
    bind = session.get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def filename_for(fmt: str, file_type: str, split: str | None = None) -> str:
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return f"ranklab-{fmt}{'-' + split if split else ''}-{stamp}.{file_type}"
