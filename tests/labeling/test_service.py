"""Assignment, leases, submission and skips, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.labeling import guidelines, history
from app.labeling import service as labeling
from app.labeling.models import Annotation, Assignment, Guideline
from tests.factories import make_prompt_set, make_task, make_user

LEASE = 30.0


def _next(session: Session, user, **kw):  # type: ignore[no-untyped-def]
    return labeling.next_assignment(session=session, user=user, lease_minutes=LEASE, **kw)


def _ranking(task, ranks: list[int], ratings: list[int] | None = None) -> dict:  # type: ignore[no-untyped-def]
    ids = [c.id for c in task.completions]
    return {
        "ranks": {str(i): r for i, r in zip(ids, ranks, strict=True)},
        "ratings": {str(i): r for i, r in zip(ids, ratings or [8 - r for r in ranks], strict=True)},
    }


class TestNextAssignment:
    def test_gives_an_open_task_with_a_shuffled_stored_order_and_a_lease(self, session: Session) -> None:
        user = make_user(session)
        ps = make_prompt_set(session, k=4)
        task = make_task(session, prompt_set=ps)
        a = _next(session, user)
        assert a is not None and a.task_id == task.id
        assert sorted(a.display_order) == sorted(c.id for c in task.completions)
        assert a.lease_expires_at > utcnow() + timedelta(minutes=29)
        view = labeling.task_view(session=session, assignment=a)
        assert [c.id for c in view.completions] == a.display_order
        assert view.labels == ["A", "B", "C", "D"] and not view.is_demo

    def test_a_reload_returns_the_same_assignment(self, session: Session) -> None:
        user = make_user(session)
        ps = make_prompt_set(session)
        make_task(session, prompt_set=ps)
        make_task(session, prompt_set=ps)
        first = _next(session, user)
        assert _next(session, user).id == first.id  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(Assignment)) == 1

    def test_overlap_is_respected_and_nobody_gets_a_task_twice(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2, overlap=2)
        task = make_task(session, prompt_set=ps)
        u1, u2, u3 = (make_user(session) for _ in range(3))
        a1, a2 = _next(session, u1), _next(session, u2)
        assert a1.task_id == a2.task_id == task.id  # type: ignore[union-attr]
        assert _next(session, u3) is None  # two live leases fill an overlap of 2
        labeling.submit(session=session, assignment=a1, **_ranking(task, [1, 2]))  # type: ignore[arg-type]
        assert _next(session, u1) is None  # had it already
        assert _next(session, u3) is None  # one label + one lease

    def test_an_expired_lease_frees_the_task(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2, overlap=1)
        task = make_task(session, prompt_set=ps)
        u1, u2 = make_user(session), make_user(session)
        a1 = _next(session, u1)
        assert _next(session, u2) is None
        later = utcnow() + timedelta(minutes=LEASE + 1)
        a2 = _next(session, u2, now=later)
        assert a2 is not None and a2.task_id == task.id
        # u1 comes back: their lease ran out and the task is taken, so they get nothing and
        # their assignment is marked expired.
        assert _next(session, u1, now=later) is None
        session.refresh(a1)
        assert a1.state == "expired"  # type: ignore[union-attr]

    def test_a_labeler_back_after_expiry_gets_their_task_again_while_there_is_room(
        self, session: Session
    ) -> None:
        ps = make_prompt_set(session, k=2)
        make_task(session, prompt_set=ps)
        user = make_user(session)
        a = _next(session, user)
        later = utcnow() + timedelta(minutes=LEASE + 5)
        again = _next(session, user, now=later)
        assert again is not None and again.id == a.id  # type: ignore[union-attr]
        assert again.lease_expires_at > later

    def test_paused_sets_and_unsampled_tasks_are_not_given(self, session: Session) -> None:
        user = make_user(session)
        make_task(session, prompt_set=make_prompt_set(session, status="paused"))
        make_task(session, prompt_set=make_prompt_set(session), status="sampling")
        assert _next(session, user) is None

    def test_queue_position_counts_done_and_left(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2)
        tasks = [make_task(session, prompt_set=ps) for _ in range(3)]
        user = make_user(session)
        a = _next(session, user)
        assert labeling.queue_position(session=session, user=user) == (1, 3)
        labeling.submit(session=session, assignment=a, **_ranking(tasks[0], [1, 2]))  # type: ignore[arg-type]
        _next(session, user)
        assert labeling.queue_position(session=session, user=user) == (2, 3)


class TestSubmitAnnotation:
    def test_competition_ranks_are_stored_dense_with_positions_and_the_guideline_version(
        self, session: Session
    ) -> None:
        session.add(Guideline(version=4, body="Be kind."))
        ps = make_prompt_set(session, k=4, overlap=1)
        task = make_task(session, prompt_set=ps)
        user = make_user(session)
        a = _next(session, user)
        ids = [c.id for c in task.completions]
        ann = labeling.submit(
            session=session,
            assignment=a,
            **_ranking(task, [1, 1, 3, 4]),  # type: ignore[arg-type]
            flags={str(ids[2]): [ps.flags[2]]},
            notes=" fine ",
            time_spent_ms=5,
        )
        by_cid = {i.completion_id: i for i in ann.items}
        assert [by_cid[i].rank for i in ids] == [1, 1, 2, 3]
        assert by_cid[ids[2]].flags == [ps.flags[2]]
        assert {by_cid[i].position for i in ids} == {0, 1, 2, 3}
        assert by_cid[a.display_order[0]].position == 0  # type: ignore[union-attr]
        assert ann.guideline_version == 4 and ann.notes == "fine"
        assert 0 <= ann.time_spent_ms <= 5  # type: ignore[operator]
        session.refresh(task)
        assert task.label_count == 1 and task.status == "closed"
        assert a.state == "submitted"  # type: ignore[union-attr]

    def test_submitting_twice_stores_one_annotation(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2)
        task = make_task(session, prompt_set=ps)
        a = _next(session, make_user(session))
        first = labeling.submit(session=session, assignment=a, **_ranking(task, [1, 2]))  # type: ignore[arg-type]
        second = labeling.submit(session=session, assignment=a, **_ranking(task, [2, 1]))  # type: ignore[arg-type]
        assert first.id == second.id
        assert session.scalar(select(func.count()).select_from(Annotation)) == 1
        session.refresh(task)
        assert task.label_count == 1

    def test_client_time_is_clamped_to_what_the_server_saw(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2)
        task = make_task(session, prompt_set=ps)
        a = _next(session, make_user(session))
        ann = labeling.submit(
            session=session,
            assignment=a,
            **_ranking(task, [1, 2]),  # type: ignore[arg-type]
            time_spent_ms=10**9,
            now=a.created_at + timedelta(seconds=42),
        )  # type: ignore[union-attr]
        assert ann.time_spent_ms == 42_000

    def test_inconsistent_ratings_need_confirmation_which_is_stored(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2)
        task = make_task(session, prompt_set=ps)
        a = _next(session, make_user(session))
        body = _ranking(task, [1, 2], ratings=[3, 5])
        with pytest.raises(labeling.SubmissionInvalid) as e:
            labeling.submit(session=session, assignment=a, **body)  # type: ignore[arg-type]
        assert e.value.field == "confirm_inconsistent"
        ann = labeling.submit(session=session, assignment=a, **body, confirm_inconsistent=True)  # type: ignore[arg-type]
        assert ann.inconsistency_confirmed is True

    def test_an_expired_lease_is_accepted_while_the_task_needs_labels(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2, overlap=1)
        task = make_task(session, prompt_set=ps)
        a = _next(session, make_user(session))
        later = utcnow() + timedelta(minutes=LEASE + 1)
        ann = labeling.submit(session=session, assignment=a, **_ranking(task, [1, 2]), now=later)  # type: ignore[arg-type]
        assert ann.id is not None

    def test_an_expired_lease_is_refused_once_the_task_is_full(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2, overlap=1)
        task = make_task(session, prompt_set=ps)
        late, other = make_user(session), make_user(session)
        a = _next(session, late)
        later = utcnow() + timedelta(minutes=LEASE + 1)
        b = _next(session, other, now=later)
        labeling.submit(session=session, assignment=b, **_ranking(task, [1, 2]), now=later)  # type: ignore[arg-type]
        with pytest.raises(labeling.SubmissionRefused, match="already has all the labels"):
            labeling.submit(session=session, assignment=a, **_ranking(task, [2, 1]), now=later)  # type: ignore[arg-type]
        session.refresh(task)
        assert task.label_count == 1

    def test_a_skip_is_stored_with_its_reason_and_counts_no_label(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2, overlap=1)
        task = make_task(session, prompt_set=ps)
        u1, u2 = make_user(session), make_user(session)
        a = _next(session, u1)
        ann = labeling.skip(session=session, assignment=a, reason="broken", notes="empty outputs")  # type: ignore[arg-type]
        assert ann.skip_reason == "broken" and ann.items == []
        session.refresh(task)
        assert task.label_count == 0 and task.status == "open"
        assert _next(session, u2).task_id == task.id  # type: ignore[union-attr]
        assert _next(session, u1) is None  # skipped tasks do not come back
        with pytest.raises(labeling.SubmissionInvalid):
            labeling.skip(session=session, assignment=_next(session, u2), reason="bored")  # type: ignore[arg-type]

    def test_history_counts_and_median(self, session: Session) -> None:
        ps = make_prompt_set(session, k=2)
        user = make_user(session)
        times = [10_000, 30_000, 50_000]
        for t in times:
            task = make_task(session, prompt_set=ps)
            a = _next(session, user)
            ann = labeling.submit(session=session, assignment=a, **_ranking(task, [1, 2]))  # type: ignore[arg-type]
            ann.time_spent_ms = t
        make_task(session, prompt_set=ps)
        labeling.skip(session=session, assignment=_next(session, user), reason="unclear")  # type: ignore[arg-type]
        h = history.history(session=session, user=user)
        assert (h.submitted, h.skipped, h.median_ms) == (3, 1, 30_000)
        assert len(h.annotations) == 4 and set(h.orders.values()) <= {"A > B", "B > A"}


def test_inconsistencies() -> None:
    assert labeling.inconsistencies({1: 1, 2: 2, 3: 2}, {1: 5, 2: 6, 3: 5}) == [(1, 2)]


def test_markdown_is_rendered_with_raw_html_escaped() -> None:
    html = guidelines.render_markdown(
        "# Rules\n\n<script>alert(1)</script> [x](javascript:alert(1)) **bold**"
    )
    assert "<h1>Rules</h1>" in html and "<strong>bold</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript' not in html
