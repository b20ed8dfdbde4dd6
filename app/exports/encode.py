"""Fast encoders for the pair formats (`comparisons`, `trl`), where rows outnumber annotations
36 to 1 at K=9: each annotation's and each output's fields are encoded once, and a pair is only
glued together from those pieces (JSON Lines) or gathered by index in Arrow (Parquet).

They produce exactly what `formats.comparison_rows` / `formats.trl_rows` describe (same keys,
same order, same values; a test holds them to it). Those dict builders stay the readable
reference; these are what exports run.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (`take` needs it; load it now, not at the first export)

from app import ranking
from app.exports.formats import AnnotationRecord, RowOptions, messages_of, schema_for

# The per-annotation columns of a comparisons row, in the schema's order.
_COMPARISON_RECORD_COLUMNS = (
    "split prompt_set task_id annotation_id prompt_id prompt messages labeler guideline_version created_at "
    "time_spent_ms"
)

_d = orjson.dumps


def record_pairs(rec: AnnotationRecord, *, keep_ties: bool) -> list[tuple[int, int, bool, int, int | None]]:
    """(chosen index, rejected index into rec.items, tie, rank gap, rating diff) per pair."""
    ranked = [i for i, it in enumerate(rec.items) if it.rank is not None]
    items = rec.items
    out = []
    for w, x, gap in ranking.pair_indices([items[i].rank for i in ranked], keep_ties=keep_ties):  # type: ignore[misc]
        c, r = ranked[w], ranked[x]
        a, b = items[c].rating, items[r].rating
        out.append((c, r, gap == 0, gap, None if a is None or b is None else a - b))
    return out


def _side(prefix: bytes, it: Any) -> bytes:
    return (
        b',"'
        + prefix
        + b'":'
        + _d(it.text)
        + b',"'
        + prefix
        + b'_completion_id":'
        + _d(it.completion_id)
        + b',"'
        + prefix
        + b'_rank":'
        + _d(it.rank)
        + b',"'
        + prefix
        + b'_rating":'
        + _d(it.rating)
        + b',"'
        + prefix
        + b'_position":'
        + _d(it.position)
        + b',"'
        + prefix
        + b'_policy":'
        + _d(it.policy)
    )


def comparison_lines(rec: AnnotationRecord) -> tuple[bytes, int]:
    """JSON Lines of every pair, ties kept and marked; and the number of lines."""
    pairs = record_pairs(rec, keep_ties=True)
    if not pairs:
        return b"", 0
    head = (
        b'{"split":'
        + _d(rec.split)
        + b',"prompt_set":'
        + _d(rec.prompt_set)
        + b',"task_id":'
        + _d(rec.task_id)
        + b',"annotation_id":'
        + _d(rec.annotation_id)
        + b',"prompt_id":'
        + _d(rec.prompt_id)
        + b',"prompt":'
        + _d(rec.prompt)
        + b',"messages":'
        + _d(messages_of(rec))
    )
    chosen = [_side(b"chosen", it) for it in rec.items]
    rejected = [_side(b"rejected", it) for it in rec.items]
    tail = (
        b',"labeler":'
        + _d(rec.labeler)
        + b',"guideline_version":'
        + _d(rec.guideline_version)
        + b',"created_at":'
        + _d(rec.created_at.isoformat())
        + b',"time_spent_ms":'
        + _d(rec.time_spent_ms)
        + b"}\n"
    )
    out: list[bytes] = []
    # Pieces go into one list joined once per annotation: no intermediate copy of each line.
    for ci, ri, _tie, gap, diff in pairs:
        out += (head, chosen[ci], rejected[ri], _mid(gap, diff), tail)
    return b"".join(out), len(pairs)


@functools.cache
def _mid(gap: int, diff: int | None) -> bytes:
    tie = b"true" if gap == 0 else b"false"
    rating = b"null" if diff is None else str(diff).encode()
    return b',"tie":' + tie + b',"rank_gap":' + str(gap).encode() + b',"rating_diff":' + rating


def _margin(opts: RowOptions, gap: int, diff: int | None) -> float:
    return float(gap) if opts.margin == "rank" else float(diff or 0)


def trl_lines(rec: AnnotationRecord, opts: RowOptions) -> tuple[bytes, int]:
    pairs = record_pairs(rec, keep_ties=False)
    if not pairs:
        return b"", 0
    if opts.conversational:
        prompt = _d(messages_of(rec))
        texts = [_d([{"role": "assistant", "content": it.text}]) for it in rec.items]
    else:
        prompt = _d(rec.prompt)
        texts = [_d(it.text) for it in rec.items]
    head = b'{"prompt":' + prompt + b',"chosen":'
    out: list[bytes] = []
    for ci, ri, _, gap, diff in pairs:
        out += (head, texts[ci], b',"rejected":', texts[ri])
        if opts.margin != "none":
            out += (b',"margin":', _d(_margin(opts, gap, diff)))
        out.append(b"}\n")
    return b"".join(out), len(pairs)


class ArrowPairs:
    """Collects annotations, then builds one Arrow table of their pairs: the per-annotation and
    per-output columns are made once and gathered with `take`, so Python touches each pair
    only to note five numbers."""

    def __init__(self, fmt: str, opts: RowOptions) -> None:
        self.fmt, self.opts = fmt, opts
        self.schema = schema_for(fmt, opts)
        self.recs: list[AnnotationRecord] = []
        self.rows = 0
        self.ann_idx: list[int] = []
        self.c_idx: list[int] = []
        self.r_idx: list[int] = []
        self.tie: list[bool] = []
        self.gap: list[int] = []
        self.diff: list[int | None] = []
        self._items = 0

    def add(self, rec: AnnotationRecord) -> int:
        pairs = record_pairs(rec, keep_ties=self.fmt == "comparisons")
        a, base = len(self.recs), self._items
        self.recs.append(rec)
        self._items += len(rec.items)
        for ci, ri, tie, gap, diff in pairs:
            self.ann_idx.append(a)
            self.c_idx.append(base + ci)
            self.r_idx.append(base + ri)
            self.tie.append(tie)
            self.gap.append(gap)
            self.diff.append(diff)
        self.rows += len(pairs)
        return len(pairs)

    def table(self) -> pa.Table:
        recs, items = self.recs, [it for rec in self.recs for it in rec.items]
        ann = pa.array(self.ann_idx, pa.int32())
        chosen, rejected = pa.array(self.c_idx, pa.int32()), pa.array(self.r_idx, pa.int32())

        def per_ann(values: Sequence[Any], name: str) -> pa.Array:
            return pa.array(values, type=self.schema.field(name).type).take(ann)

        def per_item(values: Sequence[Any], name: str) -> tuple[pa.Array, pa.Array]:
            arr = pa.array(values, type=self.schema.field(name).type)
            return arr.take(chosen), arr.take(rejected)

        cols: dict[str, Any] = {}
        if self.fmt == "trl":
            if self.opts.conversational:
                cols["prompt"] = per_ann([messages_of(r) for r in recs], "prompt")
                cols["chosen"], cols["rejected"] = per_item(
                    [[{"role": "assistant", "content": it.text}] for it in items], "chosen"
                )
            else:
                cols["prompt"] = per_ann([r.prompt for r in recs], "prompt")
                cols["chosen"], cols["rejected"] = per_item([it.text for it in items], "chosen")
            if self.opts.margin != "none":
                cols["margin"] = pa.array(
                    [_margin(self.opts, g, d) for g, d in zip(self.gap, self.diff, strict=True)], pa.float64()
                )
            return pa.Table.from_pydict(cols, schema=self.schema)
        # Each column is the record's attribute of its name, but for these two.
        made: dict[str, Any] = {"messages": messages_of, "created_at": lambda r: r.created_at.isoformat()}
        for name in _COMPARISON_RECORD_COLUMNS.split():
            get = made.get(name, attrgetter(name))
            cols[name] = per_ann([get(r) for r in recs], name)
        for suffix in ("", "_completion_id", "_rank", "_rating", "_position", "_policy"):
            attr = suffix.lstrip("_") or "text"
            cols["chosen" + suffix], cols["rejected" + suffix] = per_item(
                [getattr(it, attr) for it in items], "chosen" + suffix
            )
        cols["tie"] = pa.array(self.tie, pa.bool_())
        cols["rank_gap"] = pa.array(self.gap, pa.int32())
        cols["rating_diff"] = pa.array(self.diff, pa.int32())
        return pa.Table.from_pydict({n: cols[n] for n in self.schema.names}, schema=self.schema)
