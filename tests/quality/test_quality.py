"""Agreement, labeler statistics and win rates against figures computed by hand."""

import math

import pytest
from sqlalchemy.orm import Session

from app.quality import service as quality
from app.quality.service import Ann
from app.ranking import Item
from tests.factories import make_annotation, make_model_version, make_prompt_set, make_task, make_user


def ann(
    aid: int,
    task: int,
    user: int,
    ranks: list[int],
    ratings: list[int] | None = None,
    versions: list[int] | None = None,
    time_ms: int | None = None,
    skipped: bool = False,
) -> Ann:
    items = [
        Item(100 + i, r, ratings[i] if ratings else None, i, versions[i] if versions else None)
        for i, r in enumerate(ranks)
    ]
    return Ann(
        id=aid,
        task_id=task,
        user_id=user,
        items=[] if skipped else items,
        skipped=skipped,
        time_spent_ms=time_ms,
        prompt_set_id=1,
    )


# One task, three labelers: A (1,2,3), B (2,1,3), C (1,1,2).
THREE = [ann(1, 1, 10, [1, 2, 3]), ann(2, 1, 20, [2, 1, 3]), ann(3, 1, 30, [1, 1, 2])]


class TestAgreement:
    def test_pairwise_rate_by_hand(self) -> None:
        # A-B agree on 2 of 3 pairs; A-C and B-C on 2 of 2 (C's tie is not compared).
        assert quality.pair_agreement({1: 1, 2: 2, 3: 3}, {1: 2, 2: 1, 3: 3}) == (2, 3)
        assert quality.pair_agreement({1: 1, 2: 2, 3: 3}, {1: 1, 2: 1, 3: 2}) == (2, 2)
        overall, per = quality.agreement(THREE)
        assert (overall.agree, overall.compared) == (6, 7)
        assert overall.rate == pytest.approx(6 / 7)
        assert (per[10].agree, per[10].compared) == (4, 5)
        assert (per[20].agree, per[20].compared) == (4, 5)
        assert (per[30].agree, per[30].compared) == (4, 4)
        assert overall.task_pairs == 3

    def test_kendall_tau_b_by_hand(self) -> None:
        assert quality.kendall_tau_b([1, 2, 3], [2, 1, 3]) == pytest.approx(1 / 3)
        # one tie in y: C=2, D=0, n0-n2 = 2 -> 2 / sqrt(2 * 3)
        assert quality.kendall_tau_b([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(6))
        assert quality.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
        assert quality.kendall_tau_b([1, 1], [1, 2]) is None
        overall, _ = quality.agreement(THREE)
        assert overall.tau == pytest.approx((1 / 3 + 2 * 2 / math.sqrt(6)) / 3)

    def test_same_labeler_twice_and_single_labels_are_ignored(self) -> None:
        overall, per = quality.agreement(
            [ann(1, 1, 10, [1, 2]), ann(2, 1, 10, [2, 1]), ann(3, 2, 20, [1, 2])]
        )
        assert overall.compared == 0 and overall.rate is None and per == {}


class TestLabelerStats:
    def test_by_hand(self) -> None:
        anns = [
            ann(1, 1, 10, [1, 2, 3, 4], ratings=[7, 5, 4, 1], time_ms=10_000),  # first shown wins
            ann(2, 2, 10, [1, 1, 2, 3], ratings=[6, 6, 4, 2], time_ms=40_000),  # shares the top
            ann(3, 3, 10, [2, 1, 3, 4], ratings=[3, 5, 2, 1], time_ms=20_000),  # first loses
            ann(4, 4, 10, [], skipped=True),
            ann(5, 5, 20, [1, 2], ratings=[3, 5], time_ms=5_000),  # ratings contradict ranks
        ]
        stats = {s.user_id: s for s in quality.labeler_stats(anns)}
        a = stats[10]
        assert (a.annotations, a.skipped, a.skip_rate) == (3, 1, 0.25)
        assert a.median_time_s == 20
        assert a.first_wins == pytest.approx((1 + 0.5 + 0) / 3)
        assert a.first_expected == pytest.approx(0.25)
        assert a.contradictions == 0
        b = stats[20]
        assert b.contradictions == 1 and b.contradiction_rate == 1.0 and b.first_expected == 0.5

    def test_contradiction_rule(self) -> None:
        assert quality.contradicts([Item(1, 1, 3), Item(2, 2, 5)])
        assert not quality.contradicts([Item(1, 1, 5), Item(2, 1, 3)])  # tied ranks never contradict
        assert not quality.contradicts([Item(1, 1, 5), Item(2, 2, 5)])  # equal ratings are fine


class TestWinRates:
    def test_by_hand_with_wilson_interval(self) -> None:
        anns = [
            ann(1, 1, 10, [1, 2, 3, 4], versions=[2, 2, 1, 1]),  # v2 wins all 4 cross pairs
            ann(2, 2, 10, [1, 3, 2, 3], versions=[2, 2, 1, 1]),  # win, win, loss, tie
            ann(3, 3, 10, [1, 2], versions=[1, 1]),  # one version only: ignored
        ]
        (wr,) = quality.win_rates(anns)
        assert (wr.newer, wr.older, wr.wins, wr.losses, wr.ties) == (2, 1, 6, 1, 1)
        assert wr.rate == pytest.approx(6 / 7)
        lo, hi = wr.interval
        assert lo == pytest.approx(0.4869, abs=1e-4) and hi == pytest.approx(0.9743, abs=1e-4)

    def test_newer_by_given_order(self) -> None:
        (wr,) = quality.win_rates([ann(1, 1, 10, [1, 2], versions=[2, 1])], newer_than={1: 9, 2: 0})
        assert (wr.newer, wr.wins, wr.losses) == (1, 0, 1)

    def test_wilson_edges(self) -> None:
        assert quality.wilson(0, 0) == (0.0, 1.0)
        lo, hi = quality.wilson(10, 10)
        assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)


class TestLoad:
    def test_from_the_database(self, session: Session) -> None:
        v1, v2 = make_model_version(session), make_model_version(session)
        ps = make_prompt_set(session, k=2)
        t = make_task(session, prompt_set=ps)
        t2 = make_task(session, prompt_set=ps)
        # mix versions on t2: first completion v1, second v2
        t2.completions[0].model_version_id, t2.completions[1].model_version_id = v1.id, v2.id
        session.flush()
        u1, u2 = make_user(session), make_user(session)
        make_annotation(session, task=t, user=u1, ranks=[1, 2])
        make_annotation(session, task=t, user=u2, ranks=[2, 1])
        make_annotation(session, task=t2, user=u1, ranks=[2, 1], time_spent_ms=9000)
        make_annotation(session, task=t2, user=u2, ranks=[], skip_reason="unclear")
        anns = quality.load(session=session, prompt_set_ids=[ps.id])
        assert len(anns) == 4 and sum(a.skipped for a in anns) == 1
        overall, _ = quality.agreement(anns)
        assert (overall.agree, overall.compared) == (0, 1)
        (wr,) = quality.win_rates(anns, newer_than=quality.version_order(session=session))
        assert (wr.newer, wr.wins, wr.losses) == (v2.id, 1, 0)
        stats = {s.user_id: s for s in quality.labeler_stats(anns)}
        assert stats[u2.id].skipped == 1 and stats[u1.id].annotations == 2
        assert quality.load(session=session, prompt_set_ids=[ps.id + 999]) == []
