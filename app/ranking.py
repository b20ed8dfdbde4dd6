"""One ranking of K outputs: its validation, its normal form, its C(K,2) comparisons, and the
split its prompt falls in. Pure: no database, no torch.

Everything that reads rankings calls this module and nothing else: labeling (validation, the
dense form it stores, rating/rank contradictions), the importer, every export, the quality
figures and the reward model's trainer. So the pairs a reward model learns from are exactly the
pairs an export shows, and its validation prompts are exactly an export's `validation` split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import NamedTuple

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)  # train, validation, test

# NamedTuples, not frozen dataclasses: an export makes one Pair per row, and frozen dataclasses
# are several times slower to construct.


class Item(NamedTuple):
    """One output's place in a ranking. rank: 1 = best, equal ranks are ties."""

    completion_id: int
    rank: int
    rating: int | None = None
    position: int | None = None  # 0 = shown first
    model_version_id: int | None = None


class Pair(NamedTuple):
    """`chosen` ranked better than `rejected`; for a tie the two are in the order given."""

    chosen: Item
    rejected: Item
    tie: bool
    rank_gap: int  # rejected.rank - chosen.rank: 0 for a tie, >= 1 otherwise
    rating_diff: int | None  # chosen.rating - rejected.rating; negative when ratings contradict ranks


# --- validation and normal form ----------------------------------------------------------------


def rank_error(value: object, *, k: int | None = None) -> str | None:
    """Why `value` is not a rank, or None when it is one: a whole number >= 1 (and <= k, the
    number of outputs, when given: dense and competition ranks both fit in 1..k)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return _rank_rule(k)
    if value < 1 or (k is not None and value > k):
        return _rank_rule(k)
    return None


def _rank_rule(k: int | None) -> str:
    return (
        f"rank must be a whole number from 1 to {k}"
        if k is not None
        else "must be an integer >= 1 (1 = best)"
    )


def ranking_error(ranks: Sequence[int]) -> str | None:
    """Why valid ranks do not make a complete ranking as labelers give it (None when they do):
    some output must be best. Imported rankings may have gaps or start above 1 instead, since
    only the order matters; `dense_ranks` normalises both."""
    if ranks and min(ranks) != 1:
        return "the best output(s) must have rank 1"
    return None


def dense_ranks(ranks: Sequence[int]) -> list[int]:
    """(1, 1, 3, 4) or (2, 2, 5, 9) -> (1, 1, 2, 3): only the order matters. Every stored ranking
    is in this form."""
    dense = {r: i + 1 for i, r in enumerate(sorted(set(ranks)))}
    return [dense[r] for r in ranks]


# --- ranking -> pairs --------------------------------------------------------------------------


def pair_indices(ranks: Sequence[int], *, keep_ties: bool = False) -> list[tuple[int, int, int]]:
    """The expansion itself, on positions: (better, worse, rank gap) for each pair i < j with
    different ranks (for a tie, with `keep_ties`: (i, j, 0)), in the order i < j. Exports run
    this directly, so they make no objects per pair; everything else here is built on it."""
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be >= 1 (1 = best), got {list(ranks)}")
    out = []
    n = len(ranks)
    for i in range(n):
        ri = ranks[i]
        for j in range(i + 1, n):
            rj = ranks[j]
            if ri < rj:
                out.append((i, j, rj - ri))
            elif rj < ri:
                out.append((j, i, ri - rj))
            elif keep_ties:
                out.append((i, j, 0))
    return out


def ranking_to_pairs(items: Sequence[Item], *, keep_ties: bool = False) -> list[Pair]:
    """Every pair of items with different ranks, the better one as `chosen`; with `keep_ties`,
    the tied pairs as well (marked `tie=True`). Pairs come in the order of the items given
    (i < j), so the output is deterministic for a given input order."""
    if len({it.completion_id for it in items}) != len(items):
        raise ValueError("a completion appears twice in one ranking")
    return [
        Pair(items[w], items[x], gap == 0, gap, _diff(items[w], items[x]))
        for w, x, gap in pair_indices([it.rank for it in items], keep_ties=keep_ties)
    ]


def _diff(a: Item, b: Item) -> int | None:
    if a.rating is None or b.rating is None:
        return None
    return a.rating - b.rating


def pair_signs(ranks: Sequence[int]) -> list[int]:
    """For every pair i < j (all C(K,2), in that order): +1 when i is ranked better, -1 when j
    is, 0 for a tie. Two rankings of the same outputs compare pair by pair on these."""
    return [0 if gap == 0 else (1 if w < x else -1) for w, x, gap in pair_indices(ranks, keep_ties=True)]


def ordered_pairs(ranks: Sequence[int]) -> tuple[int, int, int]:
    """(strict pairs, tied pairs, total pairs) of a ranking, without building them."""
    total = len(ranks) * (len(ranks) - 1) // 2
    ties = 0
    seen: dict[int, int] = {}
    for r in ranks:
        ties += seen.get(r, 0)
        seen[r] = seen.get(r, 0) + 1
    return total - ties, ties, total


def contradictions(items: Sequence[Item]) -> list[Pair]:
    """The strict pairs whose ratings say the opposite: the better-ranked output rated strictly
    lower (tied ranks and equal ratings never contradict; unrated outputs are not compared)."""
    return [p for p in ranking_to_pairs(items) if p.rating_diff is not None and p.rating_diff < 0]


# --- the split ---------------------------------------------------------------------------------


def split_of(prompt: str, *, seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """train/validation/test from a hash of the prompt text: the same prompt is always in the
    same split, in every export, every reward-model run and on every machine, so no prompt is in
    two splits. `fractions` are relative shares (normalised here)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(fractions)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac / total
        if u < edge:
            return name
    return SPLITS[-1]


def split_fractions_error(fractions: Sequence[float]) -> str | None:
    """Why `fractions` cannot split (None when they can): three non-negative shares, not all 0."""
    if len(fractions) != 3 or any(not 0 <= f < math.inf for f in fractions) or sum(fractions) <= 0:
        return f"three non-negative numbers train,validation,test, not {list(fractions)}"
    return None
