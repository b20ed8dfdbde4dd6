"""Assignment with leases, submission and skips (guidelines.py and history.py hold the rest).

Concurrency: taking a task locks the task row (`FOR UPDATE SKIP LOCKED`), then counts again in
a fresh statement: under READ COMMITTED that statement sees every commit made before the lock
was granted, so the count it checks is the true one and a task is never over-assigned; the
unique (task_id, user_id) constraint keeps one labeler from getting it twice. A submission locks
its assignment row (so a double submit finds the first) and adds to `label_count` in one UPDATE;
a late one (lease expired) is checked under the task's lock like a new assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, insert, literal, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased, lazyload
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app import ranking
from app.auth.models import User
from app.chat import LABELS, Message
from app.db import utcnow
from app.errors import MAX_ROW_ID, Conflict, Invalid
from app.labeling.models import (
    Annotation,
    AnnotationItem,
    Assignment,
    AssignmentState,
    Completion,
    Guideline,
    Task,
    TaskStatus,
)
from app.prompts.models import Prompt, PromptSet, SetKind, SetStatus
from app.runs.models import ModelVersion

SKIP_REASONS: dict[str, str] = {
    "unclear": "The instruction is unclear",
    "harmful": "The instruction is harmful",
    "broken": "The outputs are broken",
    "other": "Other (say why in the notes)",
}
RATING_MIN, RATING_MAX = 1, 7
MAX_NOTES = 10_000
MAX_TIME_MS = 24 * 3600 * 1000


class SubmissionInvalid(Invalid):
    """A submission that breaks a rule; `field` names the part at fault (for the 422)."""


class SubmissionRefused(Conflict):
    """Well-formed but not acceptable now (lease expired and the task is full): a 409."""


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _live(now: datetime) -> Any:
    return and_(Assignment.state == AssignmentState.active, Assignment.lease_expires_at > now)


@dataclass
class _Room:
    label_count: int
    status: str
    overlap: int
    live: int  # unexpired leases of active assignments
    mine: bool  # this labeler has had the task already

    @property
    def has_room(self) -> bool:
        return self.status == TaskStatus.open and self.label_count + self.live < self.overlap


def _room(
    session: Session, task_id: int, user_id: int, now: datetime, *, excluding: int | None = None
) -> _Room:
    """The task's counts as committed now, in one statement of its own: under READ COMMITTED a new
    statement sees every commit made before it, including those of whoever held the task's lock."""
    live = select(func.count()).select_from(Assignment).where(Assignment.task_id == task_id, _live(now))
    if excluding is not None:
        live = live.where(Assignment.id != excluding)
    mine = exists().where(Assignment.task_id == task_id, Assignment.user_id == user_id)
    row = session.execute(
        select(Task.label_count, Task.status, PromptSet.overlap, live.scalar_subquery(), mine)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(Task.id == task_id)
    ).one()
    return _Room(int(row[0]), str(row[1]), int(row[2] or 1), int(row[3]), bool(row[4]))


def _lock_task(session: Session, task_id: int) -> None:
    session.execute(select(Task.id).where(Task.id == task_id).with_for_update())


# --- taking a task ------------------------------------------------------------------------------


def next_assignment(
    *, session: Session, user: User, lease_minutes: float, now: datetime | None = None
) -> Assignment | None:
    """The labeler's current assignment, or a new one on the next task that needs labels; None
    when there is nothing left for them.

    The common cases are two statements: one that returns the labeler's active assignments or,
    when they hold none, locks the first task with room (SKIP LOCKED, so labelers never queue
    behind each other), and one INSERT that counts again under that lock and claims it. Stale
    leases, a full task on recount, a second tab and the tail of the queue take the careful path."""
    now = now or utcnow()
    lease = timedelta(minutes=lease_minutes)
    user_id = user.id
    rows = session.execute(_held_or_pick(session, user_id, now)).all()
    held = [a for a, _ in rows if a is not None]
    if held:
        for a in held:
            if a.lease_expires_at > now:
                return a  # a reload gets the same task back
        return _next_carefully(session=session, user_id=user_id, lease=lease, now=now)
    task_id = rows[0][1] if rows else None
    if task_id is not None:
        claimed = _insert_claim(session, user_id, task_id, now, lease)
        if claimed is not None:
            return claimed
        # Full on the recount, or another tab claimed first: give the task's lock back (it was
        # taken outside any savepoint) and take the careful path.
        session.rollback()
    return _next_carefully(session=session, user_id=user_id, lease=lease, now=now)


def _open_for(user_id: int, now: datetime, task: Any = Task) -> Any:
    """Conditions of a task (`task`: Task or an alias) this labeler may take now."""
    live_count = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.task_id == task.id, _live(now))
        .correlate(task)
        .scalar_subquery()
    )
    had = exists().where(Assignment.task_id == task.id, Assignment.user_id == user_id).correlate(task)
    return and_(
        task.status == TaskStatus.open,
        PromptSet.status == SetStatus.active,
        ~had,
        task.label_count + live_count < PromptSet.overlap,
    )


def _held_or_pick(session: Session, user_id: int, now: datetime) -> Any:
    """(active assignment, None) rows for each the labeler holds, newest first; or one row
    (None, id of the first task with room, locked) when they hold none."""
    holds = exists().where(Assignment.user_id == user_id, Assignment.state == AssignmentState.active)
    pick = (
        select(Task.id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(~holds, _open_for(user_id, now))
        .order_by(Task.id)
        .limit(1)
    )
    if _is_pg(session):
        pick = pick.with_for_update(of=Task, skip_locked=True)
    one = select(literal(1).label("one")).subquery()
    return (
        select(Assignment, pick.scalar_subquery())
        .select_from(one)
        .outerjoin(
            Assignment, and_(Assignment.user_id == user_id, Assignment.state == AssignmentState.active)
        )
        .options(lazyload(Assignment.task))
        .order_by(Assignment.id.desc())
    )


def _insert_claim(
    session: Session, user_id: int, task_id: int, now: datetime, lease: timedelta
) -> Assignment | None:
    """One INSERT ... SELECT: the assignment, if the task still has room now. Under READ COMMITTED
    this statement sees every commit made before the task's lock was granted, so the count it
    checks is the true one; the partial unique index turns a second tab's claim into nothing."""
    insert_: Any
    if _is_pg(session):
        order: Any = func.coalesce(  # a demonstration task may have no completion: []
            select(func.jsonb_agg(aggregate_order_by(Completion.id, func.random())))
            .where(Completion.task_id == task_id)
            .scalar_subquery(),
            literal_column("'[]'::jsonb"),
        )
        insert_ = pg_insert
    else:
        shuffled = (
            select(Completion.id).where(Completion.task_id == task_id).order_by(func.random()).subquery()
        )
        order = select(func.json_group_array(shuffled.c.id)).scalar_subquery()
        insert_ = sqlite_insert
    when = Assignment.created_at.type
    src = (
        select(
            Task.id,
            literal(user_id),
            literal(AssignmentState.active.value),
            order,
            literal(now + lease, when),
            literal(now, when),
        )
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(Task.id == task_id, _open_for(user_id, now))
    )
    # The index's condition as a literal: a bound value defeats PostgreSQL's inference of the
    # partial index once psycopg prepares the statement (after five runs).
    stmt = (
        insert_(Assignment)
        .from_select(["task_id", "user_id", "state", "display_order", "lease_expires_at", "created_at"], src)
        .on_conflict_do_nothing(index_elements=["user_id"], index_where=text("state = 'active'"))
        .returning(Assignment)
    )
    return session.scalars(stmt, execution_options={"populate_existing": True}).first()


def _next_carefully(*, session: Session, user_id: int, lease: timedelta, now: datetime) -> Assignment | None:
    """The path for what is rare: stale leases, a recount that found the task full, a second
    tab, and the tail of the queue where the tasks left may be locked a moment by others."""
    if _is_pg(session):
        # One request at a time per labeler here: two tabs asking at once get the same assignment.
        session.execute(select(User.id).where(User.id == user_id).with_for_update())
    active = session.scalars(
        select(Assignment)
        .where(Assignment.user_id == user_id, Assignment.state == AssignmentState.active)
        .order_by(Assignment.id.desc())
    ).all()
    for held in active:
        if held.lease_expires_at > now:
            return held
    # An assignment whose lease ran out while the labeler was away: theirs again if there is room.
    for stale in active:
        savepoint = session.begin_nested()  # gives the task's lock back if it cannot be renewed
        _lock_task(session, stale.task_id)
        if _room(session, stale.task_id, user_id, now).has_room:
            stale.lease_expires_at = now + lease
            savepoint.commit()
            return stale
        savepoint.rollback()
        stale.state = AssignmentState.expired
        stale.finished_at = now
    session.flush()
    task_id = _choose_task(session, user_id, now)
    if task_id is None:
        return None
    claimed = _insert_claim(session, user_id, task_id, now, lease)
    if claimed is None:  # another tab of this labeler claimed in between: that one is theirs
        return session.scalars(
            select(Assignment)
            .where(Assignment.user_id == user_id, _live(now))
            .order_by(Assignment.id.desc())
            .limit(1)
        ).first()
    return claimed


def _choose_task(session: Session, user_id: int, now: datetime) -> int | None:
    """Lock and return the first task with room for this labeler. First pass: SKIP LOCKED, so
    labelers never queue behind each other. If that finds nothing, the tasks left may only be
    locked for a moment by others, so a second pass waits for them (PostgreSQL only)."""
    pg = _is_pg(session)
    for skip_locked in (True, False) if pg else (False,):
        rejected: list[int] = []
        while True:
            q = (
                select(Task.id)
                .join(PromptSet, PromptSet.id == Task.prompt_set_id)
                .where(_open_for(user_id, now))
                .order_by(Task.id)
                .limit(1)
            )
            if rejected:
                q = q.where(Task.id.not_in(rejected))
            if pg:
                q = q.with_for_update(of=Task, skip_locked=skip_locked)
            # A savepoint per try: the lock on a task found full is given back at once, so only
            # the task finally taken stays locked (no lock cycles between waiting labelers).
            savepoint = session.begin_nested()
            task_id = session.scalar(q)
            if task_id is None:
                savepoint.rollback()
                break
            # Counted again now that the row is ours: the snapshot of the choosing query may
            # predate an assignment committed by someone who held the lock a moment ago.
            room = _room(session, task_id, user_id, now)
            if not room.mine and room.has_room:
                savepoint.commit()
                return task_id
            savepoint.rollback()
            rejected.append(task_id)
    return None


def get_assignment(
    *, session: Session, assignment_id: int, user: User, lock: bool = False
) -> Assignment | None:
    """The assignment if it is this labeler's (others' are invisible, a 404). `lock`: read it
    FOR UPDATE."""
    if not 0 < assignment_id <= MAX_ROW_ID:
        return None  # no such row, and PostgreSQL would refuse the number itself (a 500)
    if lock:
        a = session.get(Assignment, assignment_id, with_for_update={"of": Assignment})
    else:
        a = session.get(Assignment, assignment_id)
    return a if a is not None and a.user_id == user.id else None


# A turn longer than this (characters or lines) is folded on the page; `e` unfolds it.
LONG_TURN_CHARS, LONG_TURN_LINES = 700, 12


@dataclass(frozen=True)
class Turn:
    """One message of the prompt conversation as the page shows it."""

    role: str
    label: str  # System, User, Assistant
    content: str

    @property
    def long(self) -> bool:
        return len(self.content) > LONG_TURN_CHARS or self.content.count("\n") > LONG_TURN_LINES


@dataclass
class TaskView:
    """What the page and the API show of one assignment."""

    assignment: Assignment
    prompt: str  # the conversation's readable text (app.chat.as_text)
    messages: list[Message]  # the conversation; the last turn is the user's, which the outputs answer
    completions: list[Completion]  # in display order, A first
    flags: list[str]
    k: int
    is_demo: bool
    labels: list[str] = field(default_factory=list)
    kind: str = SetKind.ranking  # a demonstration task's completions are its drafts (none or one)
    guideline_version: int | None = None
    position: tuple[int, int] | None = None  # ("Task x of y"), when asked for
    guideline_body: str | None = None  # the latest guideline's text, when the position is asked for

    @property
    def turns(self) -> list[Turn]:
        return [Turn(role=m["role"], label=LABELS[m["role"]], content=m["content"]) for m in self.messages]


def task_view(
    *, session: Session, assignment: Assignment, with_position: bool = False, now: datetime | None = None
) -> TaskView:
    """The view in one statement: prompt, completions, flags, demo mark, guideline version, and
    for the page the queue position and the guideline text."""
    columns: list[Any] = [
        Completion,
        Prompt.text,
        PromptSet.flags,
        ModelVersion.is_demo,
        _guideline_version(),
        Prompt.messages,
        PromptSet.kind,
    ]
    if with_position:
        columns += [*_position_columns(assignment.user_id, now or utcnow()), _latest_guideline_body()]
    rows = session.execute(
        select(*columns)
        .select_from(Task)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .outerjoin(Completion, Completion.task_id == Task.id)  # a demonstration task may have none
        .outerjoin(ModelVersion, ModelVersion.id == Completion.model_version_id)
        .where(Task.id == assignment.task_id)
        .order_by(Completion.id)
    ).all()
    first = rows[0]
    by_id = {r[0].id: r[0] for r in rows if r[0] is not None}
    order = [int(i) for i in assignment.display_order]
    shown = [by_id[i] for i in order if i in by_id]
    shown += [c for c in by_id.values() if c.id not in set(order)]
    return TaskView(
        assignment=assignment,
        prompt=first[1],
        messages=list(first[5]),
        completions=shown,
        flags=list(first[2] or []),
        k=len(shown),
        is_demo=any(bool(r[3]) for r in rows),
        labels=[letter(i) for i in range(len(shown))],
        kind=str(first[6]),
        guideline_version=first[4],
        position=(int(first[7]) + 1, int(first[7]) + 1 + int(first[8])) if with_position else None,
        guideline_body=first[9] if with_position else None,
    )


def letter(i: int) -> str:
    """The label of the i-th output shown: A, B, C, …."""
    return chr(ord("A") + i) if i < 26 else f"Z{i - 25}"


def _position_columns(user_id: int, now: datetime) -> tuple[Any, Any]:
    """Scalar subqueries: the labeler's finished tasks, and the tasks still open to them."""
    done = (
        select(func.count())
        .select_from(Assignment)
        .where(
            Assignment.user_id == user_id,
            Assignment.state.in_([AssignmentState.submitted, AssignmentState.skipped]),
        )
        .scalar_subquery()
    )
    other = aliased(Task)  # never the outer query's task
    left = (
        select(func.count())
        .select_from(other)
        .join(PromptSet, PromptSet.id == other.prompt_set_id)
        .where(_open_for(user_id, now, other))
        .scalar_subquery()
    )
    return done, left


def _latest_guideline_body() -> Any:
    return select(Guideline.body).order_by(Guideline.version.desc()).limit(1).scalar_subquery()


def queue_position(*, session: Session, user: User, now: datetime | None = None) -> tuple[int, int]:
    """("Task x of y"): x counts the labeler's finished tasks plus this one, y adds what is
    still open to them."""
    done, left = session.execute(select(*_position_columns(user.id, now or utcnow()))).one()
    return int(done) + 1, int(done) + 1 + int(left)


# --- submitting ---------------------------------------------------------------------------------


def inconsistencies(ranks: dict[int, int], ratings: dict[int, int]) -> list[tuple[int, int]]:
    """Pairs (better, worse) where the lower-ranked output has a strictly higher rating."""
    items = [ranking.Item(cid, r, ratings.get(cid)) for cid, r in ranks.items()]
    return [(p.chosen.completion_id, p.rejected.completion_id) for p in ranking.contradictions(items)]


def _as_int_key(key: Any, fld: str, valid: set[int]) -> int:
    try:
        cid = int(key)
    except (TypeError, ValueError):
        raise SubmissionInvalid(fld, f"{key!r} is not a completion id") from None
    if cid not in valid:
        raise SubmissionInvalid(fld, f"completion {cid} is not part of this task")
    return cid


def _validate(
    *, completion_ids: list[int], set_flags: list[str], ranks: Any, ratings: Any, flags: Any
) -> tuple[dict[int, int], dict[int, int], dict[int, list[str]]]:
    valid = set(completion_ids)
    k = len(completion_ids)
    if not isinstance(ranks, dict) or not ranks:
        raise SubmissionInvalid("ranks", "give a rank for every output (1 = best, ties share a rank)")
    clean_ranks: dict[int, int] = {}
    for key, value in ranks.items():
        cid = _as_int_key(key, "ranks", valid)
        if cid in clean_ranks:
            raise SubmissionInvalid("ranks", f"completion {cid} is ranked twice")
        problem = ranking.rank_error(value, k=k)
        if problem:
            raise SubmissionInvalid(f"ranks.{cid}", problem)
        clean_ranks[cid] = value
    missing = valid - set(clean_ranks)
    if missing:
        raise SubmissionInvalid("ranks", f"every output needs a rank; missing: {sorted(missing)}")
    problem = ranking.ranking_error(list(clean_ranks.values()))
    if problem:
        raise SubmissionInvalid("ranks", problem)
    clean_ratings: dict[int, int] = {}
    if ratings is None:
        ratings = {}
    if not isinstance(ratings, dict):
        raise SubmissionInvalid("ratings", "ratings must map completion ids to 1-7")
    for key, value in ratings.items():
        cid = _as_int_key(key, "ratings", valid)
        if isinstance(value, bool) or not isinstance(value, int) or not RATING_MIN <= value <= RATING_MAX:
            raise SubmissionInvalid(f"ratings.{cid}", "rating must be a whole number from 1 to 7")
        clean_ratings[cid] = value
    missing = valid - set(clean_ratings)
    if missing:
        raise SubmissionInvalid("ratings", f"every output needs a rating 1-7; missing: {sorted(missing)}")
    clean_flags: dict[int, list[str]] = {cid: [] for cid in completion_ids}
    if flags is None:
        flags = {}
    if not isinstance(flags, dict):
        raise SubmissionInvalid("flags", "flags must map completion ids to lists of flag names")
    allowed = set(set_flags)
    for key, value in flags.items():
        cid = _as_int_key(key, "flags", valid)
        if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
            raise SubmissionInvalid(f"flags.{cid}", "flags must be a list of flag names")
        unknown = [f for f in value if f not in allowed]
        if unknown:
            raise SubmissionInvalid(f"flags.{cid}", f"not a flag of this prompt set: {unknown[0]!r}")
        clean_flags[cid] = sorted(set(value), key=set_flags.index)
    return clean_ranks, clean_ratings, clean_flags


def _guideline_version() -> Any:
    return select(func.max(Guideline.version)).scalar_subquery()


def _check_lease(session: Session, claim: _Claim, now: datetime) -> None:
    """An expired lease is honoured only while the task still needs labels (checked under the
    task's lock, so two late submitters cannot both take the last place)."""
    if claim.lease_expires_at > now:
        return  # an expired assignment's lease ran out before it was marked expired
    _lock_task(session, claim.task_id)
    room = _room(session, claim.task_id, claim.user_id, now, excluding=claim.assignment_id)
    if not room.has_room:
        raise SubmissionRefused(
            "Your lease on this task expired and the task already has all the labels it needs, "
            "so this submission was not stored. Take the next task."
        )


@dataclass
class _Claim:
    """The assignment a submission has just marked finished, and what validating needs."""

    assignment_id: int
    user_id: int
    expired_at: datetime | None  # when it was marked expired; None: it was active
    task_id: int
    display_order: list[int]
    lease_expires_at: datetime
    created_at: datetime
    completion_ids: list[int]
    set_flags: list[str]
    overlap: int
    guideline_version: int | None
    kind: str = SetKind.ranking  # the set's: ranking or demonstration
    extra: tuple[Any, ...] = ()  # the values of _finish's `extra` columns


def _finish(
    session: Session,
    assignment_id: int,
    user_id: int,
    state: AssignmentState,
    now: datetime,
    extra: tuple[Any, ...] = (),
) -> _Claim | None:
    """Mark the assignment finished and read what the submission needs, in one UPDATE ...
    RETURNING. The UPDATE takes the row's lock, so of two submissions of one assignment (a
    double click, a retried request) the second finds it finished and returns the first's
    annotation. Nothing when it is not this labeler's, or already finished. `extra`: more
    columns for RETURNING (a task kind's own needs), written out as below."""
    # Written out: SQLAlchemy renders RETURNING's columns unqualified, which makes correlated
    # subqueries there ambiguous on SQLite.
    ids = "string_agg(c.id::text, ',')" if _is_pg(session) else "group_concat(c.id)"
    of_set = "FROM prompt_set ps JOIN task t ON t.prompt_set_id = ps.id WHERE t.id = assignment.task_id"
    row = session.execute(
        update(Assignment)
        .where(
            Assignment.id == assignment_id,
            Assignment.user_id == user_id,
            Assignment.state.in_([AssignmentState.active, AssignmentState.expired]),
        )
        # An active assignment has no finished_at and an expired one has: keeping an expired
        # one's tells what it was (RETURNING shows only new values), for _undo and _relate.
        .values(state=state, finished_at=func.coalesce(Assignment.finished_at, now))
        .returning(
            Assignment.finished_at,
            Assignment.task_id,
            Assignment.display_order,
            Assignment.lease_expires_at,
            Assignment.created_at,
            literal_column(f"(SELECT {ids} FROM completion c WHERE c.task_id = assignment.task_id)"),  # noqa: S608 (constants)
            literal_column(f"(SELECT ps.flags {of_set})", PromptSet.flags.type),
            literal_column(f"(SELECT ps.overlap {of_set})"),
            literal_column("(SELECT max(g.version) FROM guideline g)"),
            literal_column(f"(SELECT ps.kind {of_set})"),
            *extra,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    was_expired = row[0] != now
    return _Claim(
        assignment_id=assignment_id,
        user_id=user_id,
        expired_at=row[0] if was_expired else None,
        task_id=row[1],
        display_order=[int(i) for i in row[2]],
        lease_expires_at=row[3],
        created_at=row[4],
        completion_ids=sorted(int(i) for i in str(row[5] or "").split(",") if i),
        set_flags=list(row[6] or []),
        overlap=int(row[7] or 1),
        guideline_version=row[8],
        kind=str(row[9] or SetKind.ranking),
        extra=tuple(row[10:]),
    )


def _undo(session: Session, claim: _Claim) -> None:
    """Put back what _finish changed: a refused submission changes nothing, also for a caller
    that goes on in the same transaction."""
    session.execute(
        update(Assignment)
        .where(Assignment.id == claim.assignment_id)
        .values(
            state=AssignmentState.expired if claim.expired_at else AssignmentState.active,
            finished_at=claim.expired_at,
        )
        .execution_options(synchronize_session=False)
    )


@contextmanager
def undone_if_refused(session: Session, claim: _Claim) -> Iterator[None]:
    """A submission's checks and writes after _finish: a refusal puts _finish back (_undo)."""
    try:
        yield
    except (SubmissionInvalid, SubmissionRefused):
        _undo(session, claim)
        raise


def _late(session: Session, claim: _Claim, now: datetime) -> None:
    """A late submission of an assignment marked expired: finished now, not when it expired."""
    if claim.expired_at is not None:
        session.execute(
            update(Assignment)
            .where(Assignment.id == claim.assignment_id)
            .values(finished_at=now)
            .execution_options(synchronize_session=False)
        )


def _already_finished(session: Session, assignment_id: int, user_id: int) -> Annotation | None:
    """After _finish found nothing: the annotation a previous submission stored, or None when
    the assignment is not this labeler's (a 404)."""
    done = session.scalars(
        select(Annotation).where(Annotation.assignment_id == assignment_id, Annotation.user_id == user_id)
    ).first()
    if done is not None:
        return done
    a = session.get(Assignment, assignment_id)
    if a is None or a.user_id != user_id:
        return None
    raise SubmissionRefused(f"This assignment is already {a.state}.")


def _time_spent(created_at: datetime, now: datetime, client_ms: int | None) -> int:
    # The client's own measure (it pauses nothing, but it is what the labeler saw), never more
    # than the time the server has known of the assignment.
    server_ms = max(0, int((now - created_at).total_seconds() * 1000))
    if client_ms is None:
        return min(server_ms, MAX_TIME_MS)
    return max(0, min(int(client_ms), server_ms, MAX_TIME_MS))


def existing_annotation(*, session: Session, assignment: Assignment) -> Annotation | None:
    return session.scalars(select(Annotation).where(Annotation.assignment_id == assignment.id)).first()


def joined_notes(notes: str, item_notes: dict[int, str] | None, display_order: list[int]) -> str:
    """The task's notes, then one line per output note ("B: invents a date"): annotation.notes
    is one text, and the letters are the ones this labeler saw."""
    labels = {cid: letter(i) for i, cid in enumerate(display_order)}
    lines = [notes.strip()] if notes.strip() else []
    lines += [
        f"{labels.get(cid, cid)}: {note.strip()}" for cid, note in (item_notes or {}).items() if note.strip()
    ]
    return "\n".join(lines)


def _check_notes(notes: Any) -> str:
    if notes is not None and not isinstance(notes, str):
        raise SubmissionInvalid("notes", "notes must be text")
    notes = notes or ""
    if len(notes) > MAX_NOTES:
        raise SubmissionInvalid("notes", f"notes are limited to {MAX_NOTES} characters")
    if "\x00" in notes:  # PostgreSQL cannot store it: a 422, not a DataError (500)
        raise SubmissionInvalid("notes", "notes cannot contain a NUL character (\\u0000)")
    return notes


def submit(
    *,
    session: Session,
    assignment: Assignment,
    ranks: Any,
    ratings: Any = None,
    flags: Any = None,
    notes: str = "",
    time_spent_ms: int | None = None,
    confirm_inconsistent: bool = False,
    now: datetime | None = None,
) -> Annotation:
    """Store one ranking whole; a second submission of the same assignment returns the first."""
    return _on_loaded(
        session,
        assignment,
        submit_by_id,
        ranks=ranks,
        ratings=ratings,
        flags=flags,
        notes=notes,
        time_spent_ms=time_spent_ms,
        confirm_inconsistent=confirm_inconsistent,
        now=now,
    )


def _on_loaded(
    session: Session, assignment: Assignment, by_id: Callable[..., Annotation | None], **outcome: Any
) -> Annotation:
    """submit() and skip() on a loaded assignment: the by-id statement, then the loaded row reread."""
    annotation = by_id(session=session, assignment_id=assignment.id, user_id=assignment.user_id, **outcome)
    session.expire(assignment, ["state", "finished_at"])
    assert annotation is not None  # the assignment is the labeler's own
    return annotation


def submit_by_id(
    *,
    session: Session,
    assignment_id: int,
    user_id: int,
    ranks: Any,
    ratings: Any = None,
    flags: Any = None,
    notes: str = "",
    item_notes: dict[int, str] | None = None,
    time_spent_ms: int | None = None,
    confirm_inconsistent: bool = False,
    now: datetime | None = None,
) -> Annotation | None:
    """submit() by the assignment's id, in four statements: mark it submitted and read what
    validating needs, the annotation, its items, the task's count. None: not this labeler's.
    A rule broken raises after the first statement has been put back (_undo): a refused
    submission changes nothing, and the caller may go on in the same transaction."""
    now = now or utcnow()
    if not 0 < assignment_id <= MAX_ROW_ID:
        return None  # no such row, and PostgreSQL would refuse the number itself (a 500)
    claim = _finish(session, assignment_id, user_id, AssignmentState.submitted, now)
    if claim is None:
        return _already_finished(session, assignment_id, user_id)
    with undone_if_refused(session, claim):
        return _store(
            session,
            claim,
            ranks=ranks,
            ratings=ratings,
            flags=flags,
            notes=notes,
            item_notes=item_notes,
            time_spent_ms=time_spent_ms,
            confirm_inconsistent=confirm_inconsistent,
            now=now,
        )


def _annotation(
    claim: _Claim, *, notes: str, time_spent_ms: int | None, now: datetime, **outcome: Any
) -> Annotation:
    """The annotation row of a submission or a skip (outcome: its own columns)."""
    return Annotation(
        assignment_id=claim.assignment_id,
        task_id=claim.task_id,
        user_id=claim.user_id,
        guideline_version=claim.guideline_version,
        notes=notes.strip(),
        time_spent_ms=_time_spent(claim.created_at, now, time_spent_ms),
        created_at=now,
        **outcome,
    )


def _store(
    session: Session,
    claim: _Claim,
    *,
    ranks: Any,
    ratings: Any,
    flags: Any,
    notes: str,
    item_notes: dict[int, str] | None,
    time_spent_ms: int | None,
    confirm_inconsistent: bool,
    now: datetime,
) -> Annotation:
    if claim.kind != SetKind.ranking:
        raise SubmissionInvalid(
            "kind", "this is a demonstration task: write the reply (POST .../demonstration), not a ranking"
        )
    clean_ranks, clean_ratings, clean_flags = _validate(
        completion_ids=claim.completion_ids,
        set_flags=claim.set_flags,
        ranks=ranks,
        ratings=ratings,
        flags=flags,
    )
    notes = joined_notes(_check_notes(notes), item_notes, claim.display_order)
    _check_notes(notes)
    clashes = inconsistencies(clean_ranks, clean_ratings)
    if clashes and not confirm_inconsistent:
        raise SubmissionInvalid(
            "confirm_inconsistent",
            f"{len(clashes)} lower-ranked output(s) have a higher rating than one ranked above "
            "them: fix the ranks or ratings, or confirm",
        )
    _check_lease(session, claim, now)
    _late(session, claim, now)
    annotation = _annotation(
        claim, notes=notes, time_spent_ms=time_spent_ms, now=now, inconsistency_confirmed=bool(clashes)
    )
    position = {cid: i for i, cid in enumerate(claim.display_order)}
    # Stored dense (competition ranks too): 1 = best, ties share a rank.
    dense = dict(zip(clean_ranks, ranking.dense_ranks(list(clean_ranks.values())), strict=True))
    items = [
        {
            "completion_id": cid,
            "rank": dense[cid],
            "rating": clean_ratings.get(cid),
            "flags": clean_flags[cid],
            "position": position.get(cid),
        }
        for cid in claim.completion_ids
    ]
    session.add(annotation)
    session.flush()
    # One executemany, not the ORM's row-at-a-time INSERT ... RETURNING on SQLite; the items
    # are then set on the annotation as stored, for the answer to show.
    session.execute(insert(AnnotationItem), [{"annotation_id": annotation.id, **i} for i in items])
    set_committed_value(
        annotation, "items", [AnnotationItem(annotation_id=annotation.id, **i) for i in items]
    )
    count_label(session, claim)
    return annotation


def count_label(session: Session, claim: _Claim) -> None:
    """One more label on the claim's task (a ranking or a demonstration), closing it when full."""
    # In the database, not read-modify-write in Python: concurrent submitters of one task each
    # add exactly one (the UPDATE takes the row lock), and the one that fills it closes it.
    session.execute(
        update(Task)
        .where(Task.id == claim.task_id)
        .values(
            label_count=Task.label_count + 1,
            status=case((Task.label_count + 1 >= claim.overlap, TaskStatus.closed.value), else_=Task.status),
        )
        .execution_options(synchronize_session=False)
    )
    if (task := session.identity_map.get(identity_key(Task, claim.task_id))) is not None:
        session.expire(task, ["label_count", "status"])


def skip(
    *,
    session: Session,
    assignment: Assignment,
    reason: Any,
    notes: str = "",
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> Annotation:
    """Store a skip with its reason; it frees the task for others and counts no label."""
    return _on_loaded(
        session, assignment, skip_by_id, reason=reason, notes=notes, time_spent_ms=time_spent_ms, now=now
    )


def skip_by_id(
    *,
    session: Session,
    assignment_id: int,
    user_id: int,
    reason: Any,
    notes: str = "",
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> Annotation | None:
    now = now or utcnow()
    if reason not in SKIP_REASONS:
        raise SubmissionInvalid("skip", f"reason must be one of: {', '.join(SKIP_REASONS)}")
    if not isinstance(notes, str) or len(notes) > MAX_NOTES:
        raise SubmissionInvalid("notes", f"notes must be text of at most {MAX_NOTES} characters")
    if "\x00" in notes:
        raise SubmissionInvalid("notes", "notes cannot contain a NUL character (\\u0000)")
    if not 0 < assignment_id <= MAX_ROW_ID:
        return None  # as in submit_by_id
    claim = _finish(session, assignment_id, user_id, AssignmentState.skipped, now)
    if claim is None:
        return _already_finished(session, assignment_id, user_id)
    try:
        _late(session, claim, now)
    except SubmissionRefused:
        _undo(session, claim)
        raise
    annotation = _annotation(claim, notes=notes, time_spent_ms=time_spent_ms, now=now, skip_reason=reason)
    session.add(annotation)
    session.flush()
    set_committed_value(annotation, "items", [])
    return annotation
