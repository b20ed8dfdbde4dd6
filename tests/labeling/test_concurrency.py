"""50 labelers at once on PostgreSQL: no task over-assigned, none given twice to one labeler."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth.models import User
from app.labeling import service as labeling
from app.labeling.models import Annotation, Assignment, Task
from tests.factories import make_prompt_set, make_task, make_user

LABELERS, TASKS, OVERLAP = 50, 15, 3


def _run_all(target, n: int) -> list[BaseException]:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def wrapped(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            target(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_fifty_labelers_at_once_never_over_assign(committed_pg: sessionmaker[Session]) -> None:
    with committed_pg() as s:
        ps = make_prompt_set(s, k=2, overlap=OVERLAP)
        for _ in range(TASKS):
            make_task(s, prompt_set=ps)
        # One password hash for all: hashing 50 times would only slow the test down.
        proto = make_user(s)
        users = [
            User(username=f"crowd{i}", password_hash=proto.password_hash, role="labeler")
            for i in range(LABELERS)
        ]
        s.add_all(users)
        s.flush()
        user_ids = [u.id for u in users]
        s.commit()

    # Round 1: everybody asks at the same moment; 45 places for 50 labelers.
    first: dict[int, int | None] = {}

    def ask(i: int) -> None:
        with committed_pg() as s:
            user = s.get_one(User, user_ids[i])
            a = labeling.next_assignment(session=s, user=user, lease_minutes=30)
            first[i] = a.task_id if a else None
            s.commit()

    assert _run_all(ask, LABELERS) == []
    given = Counter(t for t in first.values() if t is not None)
    assert sum(given.values()) == TASKS * OVERLAP
    assert max(given.values()) == OVERLAP

    # Round 2: everybody labels until nothing is left, all at once.
    def work(i: int) -> None:
        with committed_pg() as s:
            user = s.get_one(User, user_ids[i])
            while True:
                a = labeling.next_assignment(session=s, user=user, lease_minutes=30)
                if a is None:
                    s.commit()
                    return
                ids = [c.id for c in a.task.completions]
                labeling.submit(
                    session=s,
                    assignment=a,
                    ranks={str(ids[0]): 1, str(ids[1]): 2},
                    ratings={str(ids[0]): 6, str(ids[1]): 3},
                )
                s.commit()

    assert _run_all(work, LABELERS) == []
    with committed_pg() as s:
        counts = s.execute(select(Task.id, Task.label_count, Task.status)).all()
        assert all(c == OVERLAP and st == "closed" for _, c, st in counts)
        per_task = Counter(s.scalars(select(Annotation.task_id)).all())
        assert per_task == {tid: OVERLAP for tid, _, _ in counts}
        pairs = s.execute(select(Assignment.task_id, Assignment.user_id)).all()
        assert len(pairs) == len(set(pairs)) == TASKS * OVERLAP
        assert s.scalar(select(func.count()).select_from(Assignment).where(Assignment.state == "active")) == 0


def test_the_same_submission_sent_at_once_stores_one_annotation(committed_pg: sessionmaker[Session]) -> None:
    """A double click or a retried request: several submits of one assignment, all at once."""
    with committed_pg() as s:
        ps = make_prompt_set(s, k=2, overlap=3)
        task = make_task(s, prompt_set=ps)
        user = make_user(s)
        a = labeling.next_assignment(session=s, user=user, lease_minutes=30)
        assert a is not None
        aid, uid, ids = a.id, user.id, [c.id for c in task.completions]
        s.commit()
    got: list[int] = []

    def send(i: int) -> None:
        with committed_pg() as s:
            mine = labeling.get_assignment(session=s, assignment_id=aid, user=s.get_one(User, uid), lock=True)
            ann = labeling.submit(
                session=s,
                assignment=mine,  # type: ignore[arg-type]
                ranks={str(ids[0]): 1, str(ids[1]): 2},
                ratings={str(ids[0]): 6, str(ids[1]): 3},
            )
            got.append(ann.id)
            s.commit()

    assert _run_all(send, 8) == []
    with committed_pg() as s:
        assert s.scalar(select(func.count()).select_from(Annotation)) == 1
        assert len(set(got)) == 1 and len(got) == 8
        assert s.get_one(Task, task.id).label_count == 1


def test_two_late_submitters_cannot_both_take_the_last_place(committed_pg: sessionmaker[Session]) -> None:
    """Both leases ran out, the task needs one more label, both submit at once: one is stored,
    the other is refused with a message that says why."""
    from datetime import timedelta

    from app.db import utcnow

    with committed_pg() as s:
        task = make_task(s, prompt_set=make_prompt_set(s, k=2, overlap=1))
        users = [make_user(s), make_user(s)]
        aids = []
        for u in users:  # each takes the task, then the lease runs out
            a = labeling.next_assignment(session=s, user=u, lease_minutes=30)
            assert a is not None and a.task_id == task.id
            a.lease_expires_at = utcnow() - timedelta(minutes=1)
            s.flush()
            aids.append(a.id)
        uids, ids = [u.id for u in users], [c.id for c in task.completions]
        s.commit()
    outcome: list[str] = []

    def send(i: int) -> None:
        with committed_pg() as s:
            mine = labeling.get_assignment(
                session=s, assignment_id=aids[i], user=s.get_one(User, uids[i]), lock=True
            )
            try:
                labeling.submit(
                    session=s,
                    assignment=mine,  # type: ignore[arg-type]
                    ranks={str(ids[0]): 1, str(ids[1]): 2},
                    ratings={str(ids[0]): 6, str(ids[1]): 3},
                )
                s.commit()
                outcome.append("stored")
            except labeling.SubmissionRefused as e:
                assert "already has all the labels" in e.message
                outcome.append("refused")

    assert _run_all(send, 2) == []
    assert sorted(outcome) == ["refused", "stored"]
    with committed_pg() as s:
        assert s.scalar(select(func.count()).select_from(Annotation)) == 1
        assert s.get_one(Task, task.id).label_count == 1


def test_two_tabs_asking_at_once_get_the_same_assignment(committed_pg: sessionmaker[Session]) -> None:
    """No lock on the labeler: the partial unique index turns the second claim into nothing,
    and that tab gets the first one's assignment back."""
    with committed_pg() as s:
        ps = make_prompt_set(s, k=2, overlap=1)
        for _ in range(8):  # one per round, and to spare
            make_task(s, prompt_set=ps)
        uid = make_user(s).id
        s.commit()
    got: list[int] = []

    def tab(_i: int) -> None:
        with committed_pg() as s:
            a = labeling.next_assignment(session=s, user=s.get_one(User, uid), lease_minutes=30)
            assert a is not None
            got.append(a.id)
            s.commit()

    for _ in range(5):  # several rounds: the race is not won the same way every time
        assert _run_all(tab, 4) == []
        with committed_pg() as s:
            active = s.scalars(
                select(Assignment).where(Assignment.user_id == uid, Assignment.state == "active")
            ).all()
            assert len(active) == 1 and set(got) == {active[0].id}
            s.execute(update(Assignment).where(Assignment.id == active[0].id).values(state="skipped"))
            s.commit()
        got.clear()
