"""Taking a task: assignments with leases, for any kind of task (ranking, demonstration).

Concurrency: taking a task locks the task row (`FOR UPDATE SKIP LOCKED`), then counts again in
a fresh statement: under READ COMMITTED that statement sees every commit made before the lock
was granted, so the count it checks is the true one and a task is never over-assigned; the
unique (task_id, user_id) constraint keeps one labeler from getting it twice, and the partial
unique index on active assignments keeps one labeler to one task at a time.

The hot statements are built once per dialect with bound parameters and run on the session's
connection as Core (no ORM compile or load per request); the states they test are SQL literals,
so PostgreSQL's prepared (generic) plans still match the partial indexes of migration 0005.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import UTCDateTime, attach, utcnow
from app.errors import MAX_ROW_ID
from app.labeling.models import Assignment, AssignmentState, Completion, Task, TaskStatus
from app.prompts.models import PromptSet, SetStatus

ASSIGNMENT = cast(Table, Assignment.__table__)
USER_ID: BindParameter[int] = bindparam("b_user_id")
NOW: BindParameter[datetime] = bindparam("b_now", type_=UTCDateTime())


def is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def state_is(column: Any, value: str) -> ColumnElement[bool]:
    """`column = 'value'` with the value in the SQL text: a bound value would keep a prepared
    statement's generic plan off the partial indexes (their condition is a literal)."""
    return column == literal_column(f"'{value}'")  # a member of one of our enums, never user text


def live(now: Any = NOW, a: Any = Assignment) -> ColumnElement[bool]:
    """An active assignment whose lease has not run out."""
    return and_(state_is(a.state, AssignmentState.active), a.lease_expires_at > now)


def open_for(user_id: Any = USER_ID, now: Any = NOW, task: Any = Task) -> ColumnElement[bool]:
    """Conditions of a task (`task`: Task or an alias; joined to PromptSet) this labeler may take now."""
    live_count = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.task_id == task.id, live(now))
        .correlate(task)
        .scalar_subquery()
    )
    had = exists().where(Assignment.task_id == task.id, Assignment.user_id == user_id).correlate(task)
    return and_(
        state_is(task.status, TaskStatus.open),
        state_is(PromptSet.status, SetStatus.active),
        ~had,
        task.label_count + live_count < PromptSet.overlap,
    )


def adopt(session: Session, row: Row[Any]) -> Assignment:
    """The assignment of a Core row (its columns; others ignored), as this session's object."""
    return attach(session, Assignment, {key: row._mapping[key] for key in ASSIGNMENT.c.keys()})  # noqa: SIM118


# --- the two statements of the common case ---------------------------------------------------


@cache
def _held_or_pick(pg: bool) -> Any:
    """The labeler's active assignments, newest first; or, when they hold none, one row of
    NULLs but for the id of the first task with room, locked (SKIP LOCKED on PostgreSQL)."""
    holds = exists().where(Assignment.user_id == USER_ID, state_is(Assignment.state, AssignmentState.active))
    pick = (
        select(Task.id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(~holds, open_for())
        .order_by(Task.id)
        .limit(1)
    )
    if pg:
        pick = pick.with_for_update(of=Task, skip_locked=True)
    one = select(literal(1).label("one")).subquery()
    return (
        select(*ASSIGNMENT.c, pick.scalar_subquery().label("pick"))
        .select_from(one)
        .outerjoin(
            ASSIGNMENT,
            and_(Assignment.user_id == USER_ID, state_is(Assignment.state, AssignmentState.active)),
        )
        .order_by(Assignment.id.desc())
    )


@cache
def _insert_claim_statement(pg: bool) -> Any:
    """One INSERT ... SELECT: the assignment, if the task still has room now. Under READ
    COMMITTED this statement sees every commit made before the task's lock was granted, so the
    count it checks is the true one; the partial unique index turns a second tab's claim into
    nothing."""
    task_id: BindParameter[int] = bindparam("b_task_id")
    if pg:
        order: Any = func.coalesce(  # a demonstration task may have no completion: []
            select(func.jsonb_agg(aggregate_order_by(Completion.id, func.random())))
            .where(Completion.task_id == task_id)
            .scalar_subquery(),
            literal_column("'[]'::jsonb"),
        )
    else:
        shuffled = (
            select(Completion.id).where(Completion.task_id == task_id).order_by(func.random()).subquery()
        )
        order = select(func.json_group_array(shuffled.c.id)).scalar_subquery()
    src = (
        select(
            Task.id,
            USER_ID,
            literal(AssignmentState.active.value),
            order,
            bindparam("b_lease_expires_at", type_=UTCDateTime()),
            NOW,
        )
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(Task.id == task_id, open_for())
    )
    # The index's condition as text: a bound value defeats PostgreSQL's inference of the partial
    # index once psycopg prepares the statement (after five runs).
    return (
        (pg_insert if pg else sqlite_insert)(ASSIGNMENT)
        .from_select(["task_id", "user_id", "state", "display_order", "lease_expires_at", "created_at"], src)
        .on_conflict_do_nothing(index_elements=["user_id"], index_where=text("state = 'active'"))
        .returning(*ASSIGNMENT.c)
    )


def _insert_claim(
    session: Session, user_id: int, task_id: int, now: datetime, lease: timedelta
) -> Assignment | None:
    row = (
        session.connection()
        .execute(
            _insert_claim_statement(is_pg(session)),
            {"b_user_id": user_id, "b_task_id": task_id, "b_now": now, "b_lease_expires_at": now + lease},
        )
        .first()
    )
    return adopt(session, row) if row is not None else None


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
    rows = (
        session.connection()
        .execute(_held_or_pick(is_pg(session)), {"b_user_id": user_id, "b_now": now})
        .all()
    )
    held = [r for r in rows if r.id is not None]
    if held:
        for r in held:
            if r.lease_expires_at > now:
                return adopt(session, r)  # a reload gets the same task back
        return _next_carefully(session=session, user_id=user_id, lease=lease, now=now)
    task_id = rows[0].pick if rows else None
    if task_id is not None:
        claimed = _insert_claim(session, user_id, task_id, now, lease)
        if claimed is not None:
            return claimed
        # Full on the recount, or another tab claimed first: give the task's lock back (it was
        # taken outside any savepoint) and take the careful path.
        session.rollback()
    return _next_carefully(session=session, user_id=user_id, lease=lease, now=now)


# --- the careful path -------------------------------------------------------------------------


@dataclass
class Room:
    label_count: int
    status: str
    overlap: int
    live: int  # unexpired leases of active assignments
    mine: bool  # this labeler has had the task already

    @property
    def has_room(self) -> bool:
        return self.status == TaskStatus.open and self.label_count + self.live < self.overlap


def room(
    session: Session, task_id: int, user_id: int, now: datetime, *, excluding: int | None = None
) -> Room:
    """The task's counts as committed now, in one statement of its own: under READ COMMITTED a new
    statement sees every commit made before it, including those of whoever held the task's lock."""
    live_count = select(func.count()).select_from(Assignment).where(Assignment.task_id == task_id, live(now))
    if excluding is not None:
        live_count = live_count.where(Assignment.id != excluding)
    mine = exists().where(Assignment.task_id == task_id, Assignment.user_id == user_id)
    row = session.execute(
        select(Task.label_count, Task.status, PromptSet.overlap, live_count.scalar_subquery(), mine)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(Task.id == task_id)
    ).one()
    return Room(int(row[0]), str(row[1]), int(row[2] or 1), int(row[3]), bool(row[4]))


def lock_task(session: Session, task_id: int) -> None:
    session.execute(select(Task.id).where(Task.id == task_id).with_for_update())


def _next_carefully(*, session: Session, user_id: int, lease: timedelta, now: datetime) -> Assignment | None:
    """The path for what is rare: stale leases, a recount that found the task full, a second
    tab, and the tail of the queue where the tasks left may be locked a moment by others."""
    if is_pg(session):
        # One request at a time per labeler here: two tabs asking at once get the same assignment.
        session.execute(select(User.id).where(User.id == user_id).with_for_update())
    active = session.scalars(
        select(Assignment)
        .where(Assignment.user_id == user_id, Assignment.state == AssignmentState.active)
        .order_by(Assignment.id.desc())
        .execution_options(populate_existing=True)
    ).all()
    for held in active:
        if held.lease_expires_at > now:
            return held
    # An assignment whose lease ran out while the labeler was away: theirs again if there is room.
    for stale in active:
        savepoint = session.begin_nested()  # gives the task's lock back if it cannot be renewed
        lock_task(session, stale.task_id)
        if room(session, stale.task_id, user_id, now).has_room:
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
            .where(Assignment.user_id == user_id, live(now))
            .order_by(Assignment.id.desc())
            .limit(1)
        ).first()
    return claimed


def _choose_task(session: Session, user_id: int, now: datetime) -> int | None:
    """Lock and return the first task with room for this labeler. First pass: SKIP LOCKED, so
    labelers never queue behind each other. If that finds nothing, the tasks left may only be
    locked for a moment by others, so a second pass waits for them (PostgreSQL only)."""
    pg = is_pg(session)
    for skip_locked in (True, False) if pg else (False,):
        rejected: list[int] = []
        while True:
            q = (
                select(Task.id)
                .join(PromptSet, PromptSet.id == Task.prompt_set_id)
                .where(open_for(user_id, now))
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
            counts = room(session, task_id, user_id, now)
            if not counts.mine and counts.has_room:
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
