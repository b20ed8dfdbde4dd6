"""Data quality: labeler agreement, per-labeler statistics, policy win rates.

The figures are pure functions of `Ann` records (tested on hand-computed examples);
`load` reads those records for some prompt sets.

Definitions (also in docs/exports.md):
- Pairwise agreement of two labelers on a task: over the pairs of outputs that both ordered
  strictly (no tie from either), the share they ordered the same way. Pooled over all pairs of
  labelers on all tasks labeled more than once; per labeler, over their pairs with others.
- Kendall's tau-b of two rankings of the same outputs (ties corrected); averaged over labeler
  pairs. Undefined (left out) when either ranking is all ties.
- Position bias: how often the output shown first is ranked best (a tie at the top counts as a
  share), against 1/K, the rate with no bias.
- Rating-rank contradiction: an annotation in which an output ranked strictly lower has a
  strictly higher rating than another.
- Win rate: for tasks mixing outputs of two policy versions, the share of the cross-version
  comparisons (ties left out) the newer version wins, with a 95% Wilson interval.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from app.labeling.models import Annotation, AnnotationItem, Completion, Task
from app.prompts.models import PromptSet, SetKind
from app.ranking import Item, contradictions, pair_signs, ranking_to_pairs
from app.runs.models import ModelVersion


@dataclass
class Ann:
    id: int
    task_id: int
    user_id: int
    items: list[Item] = field(default_factory=list)
    skipped: bool = False
    time_spent_ms: int | None = None
    prompt_set_id: int | None = None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sensible also near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pair_agreement(a: dict[int, int], b: dict[int, int]) -> tuple[int, int]:
    """(agreeing, compared) over output pairs both rankings order strictly."""
    common = sorted(a.keys() & b.keys())
    agree = compared = 0
    for sa, sb in zip(pair_signs([a[c] for c in common]), pair_signs([b[c] for c in common]), strict=True):
        if sa and sb:
            compared += 1
            agree += sa == sb
    return agree, compared


def kendall_tau_b(x: Sequence[int], y: Sequence[int]) -> float | None:
    """Kendall's tau-b: (C - D) / sqrt((n0 - n1)(n0 - n2)); None when undefined."""
    if len(x) != len(y):
        raise ValueError("rankings of different lengths")
    conc = disc = tx = ty = 0
    for dx, dy in zip(pair_signs(x), pair_signs(y), strict=True):
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return None if denom == 0 else (conc - disc) / denom


class Proportion:
    """A share of hits among n (agreements among comparisons, wins among decided pairs): its
    rate and Wilson interval. Subclasses say which counts those are."""

    def counts(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def rate(self) -> float | None:
        hits, n = self.counts()
        return hits / n if n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(*self.counts())


@dataclass
class Agreement(Proportion):
    agree: int = 0
    compared: int = 0
    taus: list[float] = field(default_factory=list)
    task_pairs: int = 0  # (task, labeler pair) combinations looked at

    def counts(self) -> tuple[int, int]:
        return self.agree, self.compared

    @property
    def tau(self) -> float | None:
        return statistics.fmean(self.taus) if self.taus else None


def agreement(anns: Iterable[Ann]) -> tuple[Agreement, dict[int, Agreement]]:
    """Overall and per-labeler agreement on tasks labeled by more than one labeler."""
    by_task: dict[int, list[Ann]] = defaultdict(list)
    for a in anns:
        if not a.skipped and a.items:
            by_task[a.task_id].append(a)
    overall = Agreement()
    per: dict[int, Agreement] = defaultdict(Agreement)
    for group in by_task.values():
        for a, b in combinations(group, 2):
            if a.user_id == b.user_id:
                continue
            ra = {it.completion_id: it.rank for it in a.items}
            rb = {it.completion_id: it.rank for it in b.items}
            agree, compared = pair_agreement(ra, rb)
            common = sorted(ra.keys() & rb.keys())
            tau = kendall_tau_b([ra[c] for c in common], [rb[c] for c in common])
            for acc in (overall, per[a.user_id], per[b.user_id]):
                acc.agree += agree
                acc.compared += compared
                acc.task_pairs += 1
                if tau is not None:
                    acc.taus.append(tau)
    return overall, dict(per)


@dataclass
class LabelerStats:
    user_id: int
    annotations: int
    skipped: int
    median_time_s: float | None
    first_wins: float  # share of annotations where the output shown first is ranked best
    first_expected: float  # the same with no position bias: mean of 1/K
    contradictions: int
    agreement: Agreement

    @property
    def skip_rate(self) -> float:
        total = self.annotations + self.skipped
        return self.skipped / total if total else 0.0

    @property
    def contradiction_rate(self) -> float:
        return self.contradictions / self.annotations if self.annotations else 0.0


def contradicts(items: Sequence[Item]) -> bool:
    """An output ranked strictly lower yet rated strictly higher than another."""
    return bool(contradictions(items))


def first_shown_win(items: Sequence[Item]) -> float | None:
    """1 if the first shown output is alone at rank 1, 1/m if m outputs share rank 1 with it."""
    first = [it for it in items if it.position == 0]
    if not first:
        return None
    if first[0].rank != min(it.rank for it in items):
        return 0.0
    return 1 / sum(1 for it in items if it.rank == first[0].rank)


def labeler_stats(anns: Sequence[Ann]) -> list[LabelerStats]:
    _, per_agree = agreement(anns)
    by_user: dict[int, list[Ann]] = defaultdict(list)
    for a in anns:
        by_user[a.user_id].append(a)
    out = []
    for uid, mine in sorted(by_user.items()):
        done = [a for a in mine if not a.skipped and a.items]
        times = [a.time_spent_ms / 1000 for a in done if a.time_spent_ms is not None]
        wins = [(w, 1 / len(a.items)) for a in done if (w := first_shown_win(a.items)) is not None]
        out.append(
            LabelerStats(
                user_id=uid,
                annotations=len(done),
                skipped=sum(1 for a in mine if a.skipped),
                median_time_s=statistics.median(times) if times else None,
                first_wins=statistics.fmean(w for w, _ in wins) if wins else 0.0,
                first_expected=statistics.fmean(e for _, e in wins) if wins else 0.0,
                contradictions=sum(1 for a in done if contradicts(a.items)),
                agreement=per_agree.get(uid, Agreement()),
            )
        )
    return out


@dataclass
class WinRate(Proportion):
    prompt_set_id: int | None
    newer: int  # model version ids
    older: int
    wins: int
    losses: int
    ties: int

    @property
    def n(self) -> int:
        return self.wins + self.losses

    def counts(self) -> tuple[int, int]:
        return self.wins, self.n


def win_rates(anns: Iterable[Ann], *, newer_than: dict[int, Any] | None = None) -> list[WinRate]:
    """Per round (prompt set) and version pair. `newer_than` maps version id -> order key
    (e.g. its creation rank); by default the larger id is the newer version."""
    order = newer_than or {}
    acc: dict[tuple[int | None, int, int], WinRate] = {}
    for a in anns:
        if a.skipped or not a.items:
            continue
        versions = {it.model_version_id for it in a.items if it.model_version_id is not None}
        if len(versions) != 2:
            continue
        old, new = sorted(versions, key=lambda v: (order.get(v, v), v))
        wr = acc.setdefault((a.prompt_set_id, new, old), WinRate(a.prompt_set_id, new, old, 0, 0, 0))
        for p in ranking_to_pairs(a.items, keep_ties=True):
            x, y = p.chosen.model_version_id, p.rejected.model_version_id
            if x == y or x is None or y is None:
                continue
            if p.tie:
                wr.ties += 1
            elif x == new:
                wr.wins += 1
            else:
                wr.losses += 1
    return [acc[k] for k in sorted(acc, key=lambda k: (k[0] or 0, k[1], k[2]))]


def load(*, session: Session, prompt_set_ids: Sequence[int] = (), since: datetime | None = None) -> list[Ann]:
    """The annotations of ranking sets (some, or all when none given), skipped ones included.
    Demonstration tasks have no outputs to agree on or win; their figures are their own."""
    q = (
        select(
            Annotation.id,
            Annotation.task_id,
            Annotation.user_id,
            Annotation.skip_reason,
            Annotation.time_spent_ms,
            Task.prompt_set_id,
            AnnotationItem.completion_id,
            AnnotationItem.rank,
            AnnotationItem.rating,
            AnnotationItem.position,
            Completion.model_version_id,
        )
        .join(Task, Task.id == Annotation.task_id)
        .join(PromptSet, and_(PromptSet.id == Task.prompt_set_id, PromptSet.kind == SetKind.ranking))
        .outerjoin(AnnotationItem, AnnotationItem.annotation_id == Annotation.id)
        .outerjoin(Completion, Completion.id == AnnotationItem.completion_id)
        .order_by(Annotation.id, AnnotationItem.completion_id)
    )
    if prompt_set_ids:
        q = q.where(Task.prompt_set_id.in_(list(prompt_set_ids)))
    if since is not None:
        q = q.where(Annotation.created_at >= since)
    out: list[Ann] = []
    for row in session.execute(q.execution_options(yield_per=5000)):
        if not out or out[-1].id != row[0]:
            out.append(
                Ann(
                    id=row[0],
                    task_id=row[1],
                    user_id=row[2],
                    skipped=row[3] is not None,
                    time_spent_ms=row[4],
                    prompt_set_id=row[5],
                )
            )
        if row[6] is not None:
            out[-1].items.append(Item(row[6], row[7], row[8], row[9], row[10]))
    return out


def version_order(*, session: Session) -> dict[int, tuple[object, int]]:
    """Model version id -> sort key by creation time, so "newer" means created later."""
    return {
        vid: (created, vid)
        for vid, created in session.execute(select(ModelVersion.id, ModelVersion.created_at))
    }
