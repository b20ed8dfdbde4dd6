import ast
import math
from itertools import combinations
from pathlib import Path

import pytest

from app import ranking
from app.ranking import Item, dense_ranks, ordered_pairs, ranking_to_pairs


def _items(ranks: list[int], ratings: list[int] | None = None) -> list[Item]:
    return [
        Item(completion_id=10 + i, rank=r, rating=ratings[i] if ratings else None, position=i)
        for i, r in enumerate(ranks)
    ]


class TestRankingToPairs:
    def test_strict_ranking_gives_all_pairs_better_first(self) -> None:
        pairs = ranking_to_pairs(_items([2, 1, 3]))
        assert [(p.chosen.completion_id, p.rejected.completion_id, p.rank_gap) for p in pairs] == [
            (11, 10, 1),
            (10, 12, 1),
            (11, 12, 2),
        ]
        assert not any(p.tie for p in pairs)

    def test_ties_dropped_by_default_and_kept_marked(self) -> None:
        items = _items([1, 1, 2, 3], ratings=[6, 6, 4, 5])
        strict = ranking_to_pairs(items)
        assert len(strict) == 5  # C(4,2) = 6 minus the one tie
        assert {(p.chosen.completion_id, p.rejected.completion_id) for p in strict} == {
            (10, 12),
            (10, 13),
            (11, 12),
            (11, 13),
            (12, 13),
        }
        full = ranking_to_pairs(items, keep_ties=True)
        assert len(full) == 6
        ties = [p for p in full if p.tie]
        assert len(ties) == 1 and (ties[0].chosen.completion_id, ties[0].rejected.completion_id) == (10, 11)
        assert ties[0].rank_gap == 0 and ties[0].rating_diff == 0

    def test_margins(self) -> None:
        pairs = {
            (p.chosen.completion_id, p.rejected.completion_id): p
            for p in ranking_to_pairs(_items([1, 1, 2, 3], ratings=[6, 6, 4, 5]))
        }
        assert pairs[(10, 13)].rank_gap == 2 and pairs[(10, 13)].rating_diff == 1
        # ratings contradict ranks: 12 is ranked above 13 but rated lower
        assert pairs[(12, 13)].rank_gap == 1 and pairs[(12, 13)].rating_diff == -1
        assert ranking_to_pairs(_items([1, 2]))[0].rating_diff is None

    def test_all_tied_gives_no_training_pairs(self) -> None:
        assert ranking_to_pairs(_items([1, 1, 1])) == []
        assert len(ranking_to_pairs(_items([1, 1, 1]), keep_ties=True)) == 3

    def test_k9_gives_36(self) -> None:
        assert len(ranking_to_pairs(_items(list(range(1, 10))))) == 36
        assert ordered_pairs([1, 1, 2, 2, 3]) == (8, 2, 10)

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match="ranks"):
            ranking_to_pairs(_items([0, 1]))
        with pytest.raises(ValueError, match="twice"):
            ranking_to_pairs([Item(1, 1), Item(1, 2)])

    def test_dense_ranks(self) -> None:
        assert dense_ranks([1, 1, 3, 4]) == [1, 1, 2, 3]
        assert dense_ranks([5, 2, 2, 9]) == [2, 1, 1, 3]


def explicit_pairs(ranks: list[int], keep_ties: bool) -> list[tuple[int, int, int]]:
    """The definition written out: every i < j, the lower rank first, ties in the given order."""
    out = []
    for i, j in combinations(range(len(ranks)), 2):
        if ranks[i] != ranks[j] or keep_ties:
            w, x = (i, j) if ranks[i] <= ranks[j] else (j, i)
            out.append((w, x, ranks[x] - ranks[w]))
    return out


RANKINGS = [
    [1, 2, 3, 4],
    [4, 3, 2, 1],
    [1, 1, 2, 3],
    [1, 1, 3, 4],  # competition ranks
    [2, 1, 1, 3, 4, 2],
    [1, 1, 1],
    [3, 1, 2, 1, 5, 5, 7, 8, 9],
]


class TestPairsAgainstTheDefinition:
    @pytest.mark.parametrize("ranks", RANKINGS)
    def test_pair_indices_is_the_explicit_expansion(self, ranks: list[int]) -> None:
        for keep in (False, True):
            assert ranking.pair_indices(ranks, keep_ties=keep) == explicit_pairs(ranks, keep)
        strict, ties, total = ordered_pairs(ranks)
        assert total == math.comb(len(ranks), 2) == len(ranking.pair_indices(ranks, keep_ties=True))
        assert strict == len(ranking.pair_indices(ranks)) and ties == total - strict

    def test_competition_and_dense_ranks_give_the_same_order_but_their_own_gaps(self) -> None:
        competition, dense = [1, 1, 3, 4], dense_ranks([1, 1, 3, 4])
        assert dense == [1, 1, 2, 3]
        strip = lambda ps: [(w, x) for w, x, _ in ps]  # noqa: E731
        assert strip(ranking.pair_indices(competition)) == strip(ranking.pair_indices(dense))
        assert [g for *_, g in ranking.pair_indices(competition)] == [2, 3, 2, 3, 1]
        assert [g for *_, g in ranking.pair_indices(dense)] == [1, 2, 1, 2, 1]

    @pytest.mark.parametrize("ranks", RANKINGS)
    def test_pair_signs(self, ranks: list[int]) -> None:
        want = [(ranks[i] < ranks[j]) - (ranks[j] < ranks[i]) for i, j in combinations(range(len(ranks)), 2)]
        assert ranking.pair_signs(ranks) == want

    def test_contradictions(self) -> None:
        items = [Item(1, 1, 3), Item(2, 2, 5), Item(3, 2, 6), Item(4, 3, None)]
        got = [(p.chosen.completion_id, p.rejected.completion_id) for p in ranking.contradictions(items)]
        assert got == [(1, 2), (1, 3)]  # the tie (2, 3) and the unrated 4 never contradict
        assert ranking.contradictions([Item(1, 1, 5), Item(2, 2, 5)]) == []


class TestValidation:
    def test_rank_error(self) -> None:
        assert ranking.rank_error(1) is None and ranking.rank_error(4, k=4) is None
        for bad in (0, -1, True, 1.0, "1", None):
            assert ranking.rank_error(bad) == "must be an integer >= 1 (1 = best)"
        assert ranking.rank_error(5, k=4) == "rank must be a whole number from 1 to 4"

    def test_ranking_error(self) -> None:
        assert ranking.ranking_error([1, 1, 3]) is None
        assert ranking.ranking_error([2, 3]) == "the best output(s) must have rank 1"


class TestSplit:
    def test_deterministic_and_by_prompt_text_and_seed(self) -> None:
        prompts = [f"prompt {i}" for i in range(2000)]
        first = [ranking.split_of(p) for p in prompts]
        assert first == [ranking.split_of(p) for p in prompts]
        assert ranking.split_of("prompt 7") == "train"  # a pinned value: the hash may never change
        reseeded = [ranking.split_of(p, seed=1) for p in prompts]
        assert reseeded != first and set(reseeded) == set(ranking.SPLITS)

    def test_fractions(self) -> None:
        prompts = [f"p{i}" for i in range(4000)]
        shares = {s: 0 for s in ranking.SPLITS}
        for p in prompts:
            shares[ranking.split_of(p, fractions=(0.5, 0.3, 0.2))] += 1
        assert shares["train"] / 4000 == pytest.approx(0.5, abs=0.03)
        assert shares["validation"] / 4000 == pytest.approx(0.3, abs=0.03)
        assert shares["test"] / 4000 == pytest.approx(0.2, abs=0.03)
        # relative shares; a zero share is never chosen
        assert [ranking.split_of(p, fractions=(2, 2, 0)) for p in prompts[:500]] == [
            ranking.split_of(p, fractions=(0.5, 0.5, 0)) for p in prompts[:500]
        ]
        assert "test" not in {ranking.split_of(p, fractions=(1, 1, 0)) for p in prompts}
        assert {ranking.split_of(p, fractions=(0, 1, 0)) for p in prompts} == {"validation"}
        assert ranking.split_fractions_error((1, 0)) and ranking.split_fractions_error((0, 0, 0))
        assert ranking.split_fractions_error((-1, 1, 1)) and ranking.split_fractions_error((1, 0, 0)) is None


ROOT = Path(__file__).resolve().parent.parent
# What app/ranking.py defines is defined nowhere else in app/ or trainer/; itertools.combinations
# (the usual way to write a second pairs expansion) only where it pairs something else than outputs.
ONE_PLACE = {
    "split_of",
    "dense_ranks",
    "pair_indices",
    "ranking_to_pairs",
    "pair_signs",
    "contradictions",
    "ordered_pairs",
    "rank_error",
    "ranking_error",
    "ranking_pairs",
    "split_by_prompt",
}
COMBINATIONS_OK = {"app/quality/service.py"}  # pairs of labelers' annotations of one task


def _copies(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text()
    found = [f"{rel}: hashes prompts for a split"] if "\\x00{prompt}" in text else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name in ONE_PLACE:
            found.append(f"{rel}: def {node.name}")
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "itertools"
            and rel not in COMBINATIONS_OK
            and any(a.name == "combinations" for a in node.names)
        ):
            found.append(f"{rel}: imports itertools.combinations")
    return found


def test_no_second_copy_of_the_ranking_module() -> None:
    home = ROOT / "app" / "ranking.py"
    assert len(_copies(home)) == len(ONE_PLACE) - 2 + 1  # the scan sees the originals
    found = [
        f for p in [*ROOT.glob("app/**/*.py"), *ROOT.glob("trainer/**/*.py")] if p != home for f in _copies(p)
    ]
    assert found == [], "use app.ranking instead: " + "; ".join(found)
