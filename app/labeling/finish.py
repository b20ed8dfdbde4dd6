"""Finishing an assignment, for any kind of task: mark it done, check its lease, store the
outcome (a ranking, a skip, a written reply), count the label; or put everything back.

A finish locks its assignment row (the UPDATE that marks it), so a double submit finds the first
and returns what it stored; a late one (lease expired) is checked under the task's lock like a
new assignment. Outcome modules (submit.py for rankings and skips, demonstrations.py for written
replies) call `complete` with a function that stores theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    column,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app.db import UTCDateTime, attach
from app.errors import MAX_ROW_ID, Conflict, Invalid
from app.labeling.claim import ASSIGNMENT, is_pg, lock_task, room
from app.labeling.models import Annotation, AnnotationItem, Assignment, AssignmentState, Task, TaskStatus
from app.prompts.models import SetKind

MAX_NOTES = 10_000
MAX_TIME_MS = 24 * 3600 * 1000
T = TypeVar("T")
FINISHABLE = (AssignmentState.active, AssignmentState.expired)


class SubmissionInvalid(Invalid):
    """A submission that breaks a rule; `field` names the part at fault (for the 422)."""


class SubmissionRefused(Conflict):
    """Well-formed but not acceptable now (lease expired and the task is full): a 409."""


@dataclass
class Finished:
    """The assignment a submission has just marked finished, and what storing its outcome needs."""

    assignment_id: int
    user_id: int
    expired_at: datetime | None  # when it was marked expired; None: it was active
    task_id: int
    display_order: list[int]
    lease_expires_at: datetime
    created_at: datetime
    completion_ids: list[int]  # the task's outputs, by id
    set_flags: list[str]
    overlap: int
    guideline_version: int | None
    kind: str = SetKind.ranking  # the set's: ranking or demonstration
    extra: tuple[Any, ...] = ()  # the values of the caller's `extra` RETURNING columns


@cache
def _finish_statement(pg: bool, extra: tuple[Any, ...]) -> Any:
    # Written out: SQLAlchemy renders RETURNING's columns unqualified, which makes correlated
    # subqueries there ambiguous on SQLite.
    ids = "string_agg(c.id::text, ',')" if pg else "group_concat(c.id)"
    of_set = "FROM prompt_set ps JOIN task t ON t.prompt_set_id = ps.id WHERE t.id = assignment.task_id"
    now = bindparam("b_now", type_=UTCDateTime())
    return (
        update(ASSIGNMENT)
        .where(
            Assignment.id == bindparam("b_assignment_id"),
            Assignment.user_id == bindparam("b_user_id"),
            Assignment.state.in_([literal_column(f"'{s.value}'") for s in FINISHABLE]),
        )
        # An active assignment has no finished_at and an expired one has: keeping an expired
        # one's tells what it was (RETURNING shows only new values), for undo and late.
        .values(state=bindparam("b_state"), finished_at=func.coalesce(Assignment.finished_at, now))
        .returning(
            Assignment.finished_at,
            Assignment.task_id,
            Assignment.display_order,
            Assignment.lease_expires_at,
            Assignment.created_at,
            literal_column(f"(SELECT {ids} FROM completion c WHERE c.task_id = assignment.task_id)"),  # noqa: S608 (constants)
            literal_column(f"(SELECT ps.flags {of_set})", Assignment.display_order.type),
            literal_column(f"(SELECT ps.overlap {of_set})"),
            literal_column("(SELECT max(g.version) FROM guideline g)"),
            literal_column(f"(SELECT ps.kind {of_set})"),
            *extra,
        )
    )


def finish(
    session: Session,
    assignment_id: int,
    user_id: int,
    state: AssignmentState,
    now: datetime,
    extra: tuple[Any, ...] = (),
) -> Finished | None:
    """Mark the assignment finished and read what storing needs, in one UPDATE ... RETURNING.
    Nothing when it is not this labeler's, or already finished. `extra`: more RETURNING columns
    (a task kind's own needs; a constant tuple, its statement is built once), written out as
    SQL over `assignment`."""
    row = (
        session.connection()
        .execute(
            _finish_statement(is_pg(session), extra),
            {"b_assignment_id": assignment_id, "b_user_id": user_id, "b_state": state.value, "b_now": now},
        )
        .one_or_none()
    )
    _expire(session, Assignment, assignment_id, "state", "finished_at")
    if row is None:
        return None
    was_expired = row[0] != now
    return Finished(
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


def _expire(session: Session, cls: type, row_id: int, *attributes: str) -> None:
    """Core statements changed this row: a loaded copy rereads these attributes when next used."""
    if (obj := session.identity_map.get(identity_key(cls, row_id))) is not None:
        session.expire(obj, list(attributes))


def _set_assignment(session: Session, assignment_id: int, **values: Any) -> None:
    session.connection().execute(update(ASSIGNMENT).where(Assignment.id == assignment_id).values(**values))
    _expire(session, Assignment, assignment_id, *values)


def undo(session: Session, done: Finished) -> None:
    """Put back what finish changed: a refused submission changes nothing, also for a caller
    that goes on in the same transaction."""
    state = AssignmentState.expired if done.expired_at else AssignmentState.active
    _set_assignment(session, done.assignment_id, state=state.value, finished_at=done.expired_at)


def late(session: Session, done: Finished, now: datetime) -> None:
    """A late submission of an assignment marked expired: finished now, not when it expired."""
    if done.expired_at is not None:
        _set_assignment(session, done.assignment_id, finished_at=now)


def honour_lease(session: Session, done: Finished, now: datetime) -> None:
    """An expired lease is honoured only while the task still needs labels (checked under the
    task's lock, so two late submitters cannot both take the last place); a late submission
    let through is finished now (late)."""
    # An assignment marked expired had its lease run out before: it is checked here too.
    if done.lease_expires_at <= now:
        lock_task(session, done.task_id)
        if not room(session, done.task_id, done.user_id, now, excluding=done.assignment_id).has_room:
            raise SubmissionRefused(
                "Your lease on this task expired and the task already has all the labels it needs, "
                "so this submission was not stored. Take the next task."
            )
    late(session, done, now)


def already_finished(session: Session, assignment_id: int, user_id: int) -> Annotation | None:
    """After finish found nothing: the annotation a previous submission stored, or None when
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


def complete(
    session: Session,
    assignment_id: int,
    user_id: int,
    state: AssignmentState,
    now: datetime,
    store: Callable[[Finished], T],
    replay: Callable[[Session, int, int], T | None] = already_finished,  # type: ignore[assignment]
    extra: tuple[Any, ...] = (),
) -> T | None:
    """The one flow of every outcome: finish the assignment, then `store` the outcome. A
    second submission gets what the first stored (`replay`); None: not this labeler's. A rule
    broken in `store` raises after finish has been put back (undo): a refused submission
    changes nothing, and the caller may go on in the same transaction. `extra`: as finish's."""
    if not 0 < assignment_id <= MAX_ROW_ID:
        return None  # no such row, and PostgreSQL would refuse the number itself (a 500)
    done = finish(session, assignment_id, user_id, state, now, extra)
    if done is None:
        return replay(session, assignment_id, user_id)
    try:
        return store(done)
    except (SubmissionInvalid, SubmissionRefused):
        undo(session, done)
        raise


def check_notes(notes: Any, field: str = "notes") -> str:
    if notes is not None and not isinstance(notes, str):
        raise SubmissionInvalid(field, f"{field} must be text")
    notes = notes or ""
    if len(notes) > MAX_NOTES:
        raise SubmissionInvalid(field, f"{field} are limited to {MAX_NOTES} characters")
    if "\x00" in notes:  # PostgreSQL cannot store it: a 422, not a DataError (500)
        raise SubmissionInvalid(field, f"{field} cannot contain a NUL character (\\u0000)")
    return notes


def time_spent(created_at: datetime, now: datetime, client_ms: int | None) -> int:
    # The client's own measure (it pauses nothing, but it is what the labeler saw), never more
    # than the time the server has known of the assignment.
    server_ms = max(0, int((now - created_at).total_seconds() * 1000))
    if client_ms is None:
        return min(server_ms, MAX_TIME_MS)
    return max(0, min(int(client_ms), server_ms, MAX_TIME_MS))


_INSERT_ITEMS = insert(cast(Table, AnnotationItem.__table__))


@cache
def _insert_returning_id(table: Table) -> Any:
    return insert(table).returning(table.c.id)


def insert_row(session: Session, cls: type[T], values: dict[str, Any]) -> T:
    """A new row by a Core INSERT built once, as this session's object (no ORM flush)."""
    table = cast(Table, cls.__table__)  # type: ignore[attr-defined]
    row_id = session.connection().execute(_insert_returning_id(table), values).scalar_one()
    return attach(session, cls, {"id": row_id, **values})


def store_annotation(
    session: Session,
    done: Finished,
    *,
    notes: str,
    time_spent_ms: int | None,
    now: datetime,
    items: list[dict[str, Any]] | None = None,
    skip_reason: str | None = None,
    inconsistency_confirmed: bool = False,
    counts: bool = False,
) -> Annotation:
    """The annotation row of a submission or a skip, and its items; `counts`: it counts as a
    label (count_label). On PostgreSQL a counted outcome is one statement (data-modifying CTEs);
    elsewhere Core INSERTs (the items in one executemany), then the count. The rows come back as
    this session's objects, for the answer to show."""
    values = {
        "assignment_id": done.assignment_id,
        "task_id": done.task_id,
        "user_id": done.user_id,
        "guideline_version": done.guideline_version,
        "skip_reason": skip_reason,
        "notes": notes.strip(),
        "time_spent_ms": time_spent(done.created_at, now, time_spent_ms),
        "inconsistency_confirmed": inconsistency_confirmed,
        "created_at": now,
    }
    items = items or []
    if counts and is_pg(session):
        annotation_id = (
            session.connection()
            .execute(
                _store_counted_pg(),
                {
                    **{f"b_{key}": value for key, value in values.items()},
                    "b_items": items,
                    **_count_params(done),
                },
            )
            .scalar_one()
        )
        _expire_count(session, done)
        annotation = attach(session, Annotation, {"id": annotation_id, **values})
        rows = [{"annotation_id": annotation_id, **i} for i in items]
    else:
        annotation = insert_row(session, Annotation, values)
        rows = [{"annotation_id": annotation.id, **i} for i in items]
        if rows:
            session.connection().execute(_INSERT_ITEMS, rows)
        if counts:
            count_label(session, done)
    # Set after adding, as loaded: the save cascade never sees the items (they are stored).
    set_committed_value(annotation, "items", [AnnotationItem(**r) for r in rows])
    return annotation


@cache
def _store_counted_pg() -> Any:
    """One statement for the annotation, its items (a JSON array of rows) and the task's count:
    one round trip where the three statements took three and psycopg's pipeline for the items,
    which cost more CPU than the rest of the submission's SQL together."""
    annotation = cast(Table, Annotation.__table__)
    item = cast(Table, AnnotationItem.__table__)
    new = (
        insert(annotation)
        # b_ names: a parameter named as a task column would join the UPDATE's SET clause.
        .values({c.name: bindparam(f"b_{c.name}", type_=c.type) for c in annotation.c if c.name != "id"})
        .returning(annotation.c.id)
        .cte("new_annotation")
    )
    # An item's own columns, as the JSON rows carry them (the table's types: JSONB for flags).
    names = [c.name for c in item.c if c.name not in ("id", "annotation_id")]
    rows = (
        func.jsonb_to_recordset(bindparam("b_items", type_=JSONB()))
        .table_valued(*(column(n, item.c[n].type) for n in names))
        .render_derived(name="item", with_types=True)
    )
    new_items = insert(item).from_select(
        ["annotation_id", *names],
        select(new.c.id, *(rows.c[n] for n in names)).select_from(new).join(rows, true()),
    )
    return select(new.c.id).add_cte(new_items.cte("new_items"), _count_label_statement().cte("counted"))


@cache
def _count_label_statement() -> Any:
    plus_one = Task.label_count + 1
    return (
        update(cast(Table, Task.__table__))
        .where(Task.id == bindparam("b_task_id"))
        .values(
            label_count=plus_one,
            status=case(
                (plus_one >= bindparam("b_overlap"), literal_column(f"'{TaskStatus.closed.value}'")),
                else_=Task.status,
            ),
        )
    )


def count_label(session: Session, done: Finished) -> None:
    """In the database, not read-modify-write in Python: concurrent submitters of one task each
    add exactly one (the UPDATE takes the row lock), and the one that fills it closes it."""
    session.connection().execute(_count_label_statement(), _count_params(done))
    _expire_count(session, done)


def _count_params(done: Finished) -> dict[str, int]:
    return {"b_task_id": done.task_id, "b_overlap": done.overlap}


def _expire_count(session: Session, done: Finished) -> None:
    """The task's count and status changed in the database: this session reads them afresh."""
    _expire(session, Task, done.task_id, "label_count", "status")
