"""Filtered, streaming reads of annotations, the train/validation/test split, and manifests.

Nothing here loads a whole dataset: annotations come from one ordered join read in chunks
(`yield_per`, a server-side cursor on PostgreSQL), are regrouped one annotation at a time,
turned into rows, and written batch by batch.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, Select, and_, or_, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import utcnow
from app.errors import MAX_ROW_ID, Invalid
from app.exports import encode, formats
from app.exports.formats import AnnotationRecord, ItemRecord, RowOptions
from app.labeling.models import Annotation, AnnotationItem, Completion, Task
from app.prompts.models import Prompt, PromptSet, SetKind
from app.ranking import SPLIT_FRACTIONS, SPLITS, ordered_pairs, split_fractions_error, split_of
from app.runs.models import ModelVersion

BATCH_ANNOTATIONS = 500  # annotations per written batch (Parquet row group: up to 18,000 pairs at K=9)
PAGE_ANNOTATIONS = 1_000  # annotations per database round trip


class ExportError(Invalid):
    """A refusal naming the field (the query parameter or CLI option), shown as it is."""


@dataclass
class Filters:
    prompt_set_ids: list[int] = field(default_factory=list)
    policy_version_ids: list[int] = field(default_factory=list)  # tasks with an output of these
    since: datetime | None = None
    until: datetime | None = None
    labeler_ids: list[int] = field(default_factory=list)
    include_skipped: bool = False  # only `rankings` has rows for skipped annotations
    exclude_flagged: bool = False  # drop annotations where any output got any flag
    min_labels: int = 0  # tasks with at least this many submitted (not skipped) annotations
    split: str | None = None  # keep only this split
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"] = self.since.isoformat() if self.since else None
        out["until"] = self.until.isoformat() if self.until else None
        out["split_fractions"] = list(self.split_fractions)
        return out


def pseudonym(user_id: int, secret: str) -> str:
    """A stable labeler name that reveals nothing without the secret key."""
    digest = hmac.new(secret.encode(), f"labeler:{user_id}".encode(), hashlib.sha256).hexdigest()
    return f"L-{digest[:6]}"


def resolve_labelers(*, session: Session, names: list[str], secret: str) -> list[int]:
    """Usernames, pseudonyms ("L-3f9a2c") or ids -> user ids; an unknown one is an error."""
    if not names:
        return []
    users = list(session.execute(select(User.id, User.username)))
    by_name = {u: i for i, u in users} | {pseudonym(i, secret): i for i, _ in users}
    by_name |= {str(i): i for i, _ in users}
    out = []
    for n in names:
        n = n.strip()
        if n not in by_name:
            raise ExportError("labeler", f"no labeler called {n!r}")
        out.append(by_name[n])
    return out


def resolve_ids(
    *, session: Session, model: type[PromptSet] | type[ModelVersion], values: Sequence[str]
) -> list[int]:
    """Prompt set or model version names or ids -> ids; an unknown one is an error naming it."""
    out = []
    for v in values:
        v = str(v).strip()
        as_id = int(v) if v.isdigit() and int(v) <= MAX_ROW_ID else -1  # no DataError on PostgreSQL
        found = session.scalar(select(model.id).where(or_(model.name == v, model.id == as_id)))
        if found is None:
            field = "set" if model is PromptSet else "policy"
            raise ExportError(field, f"no {model.__tablename__.replace('_', ' ')} called {v!r}")
        out.append(found)
    return out


def parse_time(value: str | datetime | None, name: str) -> datetime | None:
    """An ISO date or time; one without a zone is UTC."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ExportError(name, f"not an ISO date or time: {value!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# The filters a job's params may carry, named as `ranklab export`'s options (see filters_from_params).
FILTER_PARAMS = (
    "sets",
    "policies",
    "labelers",
    "since",
    "until",
    "min_labels",
    "exclude_flagged",
    "split_seed",
    "split_fractions",
)


def filters_from_params(*, session: Session, params: Mapping[str, Any], secret: str) -> Filters:
    """Export filters from JSON params, with `ranklab export`'s meaning: sets and policies by
    name or id, labelers by username, pseudonym or id, since/until ISO times (UTC when no zone
    is given), min_labels, exclude_flagged, split_seed and split_fractions (a list or
    "0.9,0.05,0.05"). Every split is kept: each record carries its own. Absent params take
    the export's defaults."""

    def names(key: str) -> list[str]:
        v = params.get(key) or []
        return [str(v)] if isinstance(v, str | int) else [str(x) for x in v]

    min_labels = params.get("min_labels") or 0
    if isinstance(min_labels, bool) or not isinstance(min_labels, int) or not 0 <= min_labels <= MAX_ROW_ID:
        raise ExportError("min_labels", f"a whole number from 0 to {MAX_ROW_ID}, not {min_labels!r}")
    seed = params.get("split_seed") or 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ExportError("split_seed", f"a whole number, not {seed!r}")
    fractions = parse_fractions(params.get("split_fractions") or SPLIT_FRACTIONS, "split fractions")
    return Filters(
        prompt_set_ids=resolve_ids(session=session, model=PromptSet, values=names("sets")),
        policy_version_ids=resolve_ids(session=session, model=ModelVersion, values=names("policies")),
        since=parse_time(params.get("since"), "since"),
        until=parse_time(params.get("until"), "until"),
        labeler_ids=resolve_labelers(session=session, names=names("labelers"), secret=secret),
        exclude_flagged=bool(params.get("exclude_flagged")),
        min_labels=min_labels,
        split_seed=seed,
        split_fractions=fractions,
    )


def parse_fractions(raw: str | Sequence[float], name: str) -> tuple[float, float, float]:
    """ "0.9,0.05,0.05" or three numbers -> the split's train, validation and test shares."""
    try:
        values = tuple(float(x) for x in (raw.split(",") if isinstance(raw, str) else raw))
    except (TypeError, ValueError):
        raise ExportError(name, f"three numbers train,validation,test, not {raw!r}") from None
    problem = split_fractions_error(values)
    if problem:
        raise ExportError(name, problem)
    return values[0], values[1], values[2]


def annotation_conditions(filters: Filters, kind: str = SetKind.ranking) -> list[Any]:
    """The filters as SQL conditions on Annotation/Task, for the sets of one kind: the ranking
    exports read ranking sets only (a demonstration has no outputs ranked), the SFT export the
    demonstration sets."""
    conds: list[Any] = [Task.prompt_set_id.in_(select(PromptSet.id).where(PromptSet.kind == kind))]
    if filters.prompt_set_ids:
        conds.append(Task.prompt_set_id.in_(filters.prompt_set_ids))
    if filters.since:
        conds.append(Annotation.created_at >= filters.since)
    if filters.until:
        conds.append(Annotation.created_at < filters.until)
    if filters.labeler_ids:
        conds.append(Annotation.user_id.in_(filters.labeler_ids))
    if not filters.include_skipped:
        conds.append(Annotation.skip_reason.is_(None))
    if filters.policy_version_ids:
        # Correlated EXISTS (index on completion.task_id), not IN (subquery): no full scan per page.
        conds.append(
            select(Completion.id)
            .where(
                Completion.task_id == Annotation.task_id,
                Completion.model_version_id.in_(filters.policy_version_ids),
            )
            .exists()
        )
    if filters.min_labels > 1:
        conds.append(Task.label_count >= filters.min_labels)  # kept up to date by labeling
    return conds


def _id_pages(
    session: Session, filters: Filters, *, by_task: bool, page: int = PAGE_ANNOTATIONS
) -> Iterator[list[int]]:
    """Matching annotation ids in export order, a page at a time (keyset paging: each query is
    short and bounded, so no database sorts the whole result and no cursor stays open)."""
    conds = annotation_conditions(filters)
    last_task, last_id = -1, -1
    size = max(1, page // 10)  # a small first page, so the first bytes leave at once
    while True:
        q = select(Annotation.id, Annotation.task_id).join(Task, Task.id == Annotation.task_id)
        if by_task:
            q = q.where(
                or_(
                    Annotation.task_id > last_task,
                    and_(Annotation.task_id == last_task, Annotation.id > last_id),
                )
            )
            q = q.order_by(Annotation.task_id, Annotation.id)
        else:
            q = q.where(Annotation.id > last_id).order_by(Annotation.id)
        rows = session.execute(q.where(*conds).limit(size)).all()
        if not rows:
            return
        yield [r[0] for r in rows]
        last_id, last_task = rows[-1][0], rows[-1][1]
        if len(rows) < size:
            return
        size = page


# What every record says of its annotation, in this order (the SFT records query reads them too).
ANNOTATION_COLUMNS = (
    Annotation.id,
    Annotation.task_id,
    Annotation.user_id,
    Annotation.guideline_version,
    Annotation.created_at,
    Annotation.time_spent_ms,
)


def _annotations_query(ids: list[int]) -> Select[Any]:
    cols: list[Any] = [
        *ANNOTATION_COLUMNS,
        Annotation.notes,
        Annotation.skip_reason,
        Annotation.inconsistency_confirmed,
        Task.prompt_set_id,
        Prompt.id,
        Prompt.text,
        Prompt.messages,
    ]
    return (
        select(*cols)
        .join(Task, Task.id == Annotation.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(Annotation.id.in_(ids))
    )


def _items_query(ids: list[int], *, with_flags: bool) -> Select[Any]:
    # Flags are JSON, decoded per row: read them only when a format or filter needs them.
    cols: list[Any] = [
        AnnotationItem.annotation_id,
        AnnotationItem.completion_id,
        AnnotationItem.rank,
        AnnotationItem.rating,
        AnnotationItem.position,
        Completion.text,
        Completion.model_version_id,
    ]
    if with_flags:
        cols.append(AnnotationItem.flags)
    return (
        select(*cols)
        .join(Completion, Completion.id == AnnotationItem.completion_id)
        .where(AnnotationItem.annotation_id.in_(ids))
        .order_by(AnnotationItem.annotation_id, AnnotationItem.completion_id)
    )


@dataclass
class Counts:
    rows: int = 0
    annotations: int = 0
    pairs: int = 0
    ties: int = 0
    by_split: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    tasks: set[int] = field(default_factory=set)
    prompts: set[int] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("rows", "annotations", "pairs", "ties")},
            "tasks": len(self.tasks),
            "prompts": len(self.prompts),
            "rows_by_split": dict(self.by_split),
        }


class RecordNames:
    """What an export computes once per prompt and per labeler: the prompt's split (by its text)
    and the labeler's name in the file (a pseudonym, or the username with real_names)."""

    def __init__(self, *, session: Session, filters: Filters, secret: str, real_names: bool) -> None:
        self.filters, self.secret, self.real_names = filters, secret, real_names
        self.usernames = dict(session.execute(select(User.id, User.username)).all()) if real_names else {}
        self.splits: dict[int, str] = {}
        self.labelers: dict[int, str] = {}

    def split(self, prompt_id: int, prompt: str) -> str:
        found = self.splits.get(prompt_id)
        if found is None:
            f = self.filters
            found = self.splits[prompt_id] = split_of(prompt, seed=f.split_seed, fractions=f.split_fractions)
        return found

    def labeler(self, user_id: int) -> str:
        found = self.labelers.get(user_id)
        if found is None:
            found = self.labelers[user_id] = (
                self.usernames[user_id] if self.real_names else pseudonym(user_id, self.secret)
            )
        return found


def iter_records(
    *,
    session: Session,
    filters: Filters,
    secret: str,
    real_names: bool = False,
    by_task: bool = False,
    with_flags: bool = True,
) -> Iterator[AnnotationRecord]:
    """Annotations one at a time (items in completion order), filtered, with their split."""
    set_names = dict(session.execute(select(PromptSet.id, PromptSet.name)).all())
    policy_names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    names = RecordNames(session=session, filters=filters, secret=secret, real_names=real_names)
    with_flags = with_flags or filters.exclude_flagged
    # Two short queries per page (annotations with their prompt; items with their output text)
    # rather than one join: the annotation's columns are not repeated K times per page.
    for ids in _id_pages(session, filters, by_task=by_task):
        anns = {row[0]: row for row in session.execute(_annotations_query(ids))}
        items: dict[int, list[ItemRecord]] = {}
        for r in session.execute(_items_query(ids, with_flags=with_flags)):
            items.setdefault(r[0], []).append(
                ItemRecord(
                    completion_id=r[1],
                    text=r[5],
                    rank=r[2],
                    rating=r[3],
                    flags=(r[7] or []) if with_flags else [],
                    position=r[4],
                    model_version_id=r[6],
                    policy=policy_names.get(r[6]),
                )
            )
        for ann_id in ids:
            row = anns.get(ann_id)
            if row is None:
                continue  # deleted between the two queries (PostgreSQL, read committed)
            user_id, prompt_id, prompt = row[2], row[10], row[11]
            split = names.split(prompt_id, prompt)
            if filters.split and split != filters.split:
                continue
            mine = items.get(ann_id, [])
            if filters.exclude_flagged and any(it.flags for it in mine):
                continue
            name = names.labeler(user_id)
            yield AnnotationRecord(
                annotation_id=ann_id,
                task_id=row[1],
                prompt_set=set_names.get(row[9], ""),
                prompt_id=prompt_id,
                prompt=prompt,
                prompt_messages=row[12],
                labeler=name,
                guideline_version=row[3],
                created_at=row[4],
                time_spent_ms=row[5],
                notes=row[6] or "",
                skip_reason=row[7],
                inconsistency_confirmed=bool(row[8]),
                split=split,
                items=mine,
            )


def iter_rows(
    *,
    session: Session,
    fmt: str,
    filters: Filters,
    opts: RowOptions,
    secret: str,
    real_names: bool = False,
    counts: Counts | None = None,
    file_type: str = "jsonl",
    batch_annotations: int = BATCH_ANNOTATIONS,
) -> Iterator[formats.Batch]:
    """Batches of format `fmt`, counted into `counts` as they go: JSON Lines bytes or Arrow
    tables for the pair formats (see app.exports.encode), lists of row dicts for the others."""
    if fmt not in formats.FORMATS:
        raise ExportError("format", f"one of {', '.join(formats.FORMATS)}, not {fmt!r}")
    counts = counts if counts is not None else Counts()
    if fmt == "sft":  # demonstrations, not annotations with items: their own query
        from app.exports.sft import iter_sft_rows

        yield from iter_sft_rows(
            session=session,
            filters=filters,
            secret=secret,
            real_names=real_names,
            counts=counts,
            batch_size=batch_annotations,
        )
        return
    records = iter_records(
        session=session,
        filters=filters,
        secret=secret,
        real_names=real_names,
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
class Export:
    """One export: iterate `stream` for the bytes, then call `manifest()`."""

    fmt: str
    file_type: str
    filters: Filters
    opts: RowOptions
    real_names: bool
    counts: Counts
    stream: HashingStream
    started_at: datetime

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
        from app.exports.sft import check_filters

        check_filters(filters)
    problem = split_fractions_error(filters.split_fractions)
    if problem:
        # Checked here, not mid-stream: a bad one would fail after the first bytes had left.
        raise ExportError("fractions", f"split fractions: {problem}")
    counts = Counts()
    schema = formats.schema_for(fmt, opts)

    def chunks() -> Iterator[bytes]:
        with session_factory() as session:
            _snapshot(session)
            batches = iter_rows(
                session=session,
                fmt=fmt,
                filters=filters,
                opts=opts,
                secret=secret,
                real_names=real_names,
                counts=counts,
                file_type=file_type,
                batch_annotations=batch_annotations,
            )
            yield from formats.write(batches, file_type=file_type, schema=schema)

    return Export(
        fmt=fmt,
        file_type=file_type,
        filters=filters,
        opts=opts,
        real_names=real_names,
        counts=counts,
        stream=HashingStream(chunks()),
        started_at=utcnow(),
    )


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
