import pytest

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
