"""One ranking of K outputs -> its C(K,2) comparisons. Pure: no database, no torch.

The trainer imports this too, so the pairs a reward model learns from are exactly the pairs
an export shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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


def pair_indices(ranks: Sequence[int], *, keep_ties: bool = False) -> list[tuple[int, int, int]]:
    """The expansion itself, on positions: (better, worse, rank gap) for each pair i < j with
    different ranks (for a tie, with `keep_ties`: (i, j, 0)). Exports run this directly, so
    they make no objects per pair; `ranking_to_pairs` is the same thing with Items."""
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


def _diff(a: Item, b: Item) -> int | None:
    if a.rating is None or b.rating is None:
        return None
    return a.rating - b.rating


def dense_ranks(ranks: Sequence[int]) -> list[int]:
    """(1, 1, 3, 4) or (2, 2, 5, 9) -> (1, 1, 2, 3): only the order matters."""
    dense = {r: i + 1 for i, r in enumerate(sorted(set(ranks)))}
    return [dense[r] for r in ranks]


def ordered_pairs(ranks: Sequence[int]) -> tuple[int, int, int]:
    """(strict pairs, tied pairs, total pairs) of a ranking, without building them."""
    total = len(ranks) * (len(ranks) - 1) // 2
    ties = 0
    seen: dict[int, int] = {}
    for r in ranks:
        ties += seen.get(r, 0)
        seen[r] = seen.get(r, 0) + 1
    return total - ties, ties, total
