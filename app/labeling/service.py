"""Assignment with leases, submission and skips (guidelines.py and history.py hold the rest).

Concurrency: taking a task locks the task row (`FOR UPDATE SKIP LOCKED`), then counts again in
a fresh statement: under READ COMMITTED that statement sees every commit made before the lock
was granted, so the count it checks is the true one and a task is never over-assigned; the
unique (task_id, user_id) constraint keeps one labeler from getting it twice. A submission locks
its assignment row (so a double submit finds the first) and adds to `label_count` in one UPDATE;
a late one (lease expired) is checked under the task's lock like a new assignment.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from app.auth.models import User
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
from app.prompts.models import Prompt, PromptSet, SetStatus
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


def current_assignment(*, session: Session, user: User, now: datetime | None = None) -> Assignment | None:
    """The labeler's active assignment whose lease still runs (a reload gets it back)."""
    now = now or utcnow()
    return session.scalars(
        select(Assignment)
        .where(Assignment.user_id == user.id, _live(now))
        .order_by(Assignment.id.desc())
        .limit(1)
    ).first()


def next_assignment(
    *, session: Session, user: User, lease_minutes: float, now: datetime | None = None
) -> Assignment | None:
    """The labeler's current assignment, or a new one on the next task that needs labels; None
    when there is nothing left for them."""
    now = now or utcnow()
    if _is_pg(session):
        # One request at a time per labeler: two tabs asking at once get the same assignment.
        session.execute(select(User.id).where(User.id == user.id).with_for_update())
    lease = timedelta(minutes=lease_minutes)
    active = session.scalars(
        select(Assignment)
        .where(Assignment.user_id == user.id, Assignment.state == AssignmentState.active)
        .order_by(Assignment.id.desc())
    ).all()
    for held in active:
        if held.lease_expires_at > now:
            return held  # a reload gets the same task back
    # An assignment whose lease ran out while the labeler was away: theirs again if there is room.
    for stale in active:
        savepoint = session.begin_nested()  # gives the task's lock back if it cannot be renewed
        _lock_task(session, stale.task_id)
        if _room(session, stale.task_id, user.id, now).has_room:
            stale.lease_expires_at = now + lease
            savepoint.commit()
            return stale
        savepoint.rollback()
        stale.state = AssignmentState.expired
        stale.finished_at = now
    session.flush()

    live_count = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.task_id == Task.id, _live(now))
        .correlate(Task)
        .scalar_subquery()
    )
    had = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user.id)
    task_id = _choose_task(session, user, now, live_count, had)
    if task_id is None:
        return None
    task = session.get_one(Task, task_id)
    order = [c.id for c in task.completions]
    secrets.SystemRandom().shuffle(order)
    assignment = Assignment(
        task_id=task.id,
        user_id=user.id,
        display_order=order,
        lease_expires_at=now + lease,
        created_at=now,
        task=task,
    )
    session.add(assignment)
    session.flush()
    return assignment


def _choose_task(session: Session, user: User, now: datetime, live_count: Any, had: Any) -> int | None:
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
                .where(
                    Task.status == TaskStatus.open,
                    PromptSet.status == SetStatus.active,
                    ~had,
                    Task.label_count + live_count < PromptSet.overlap,
                )
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
            room = _room(session, task_id, user.id, now)
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
    FOR UPDATE, as submit() would, saving submit() that read."""
    if not 0 < assignment_id <= MAX_ROW_ID:
        return None  # no such row, and PostgreSQL would refuse the number itself (a 500)
    if lock:
        a = session.get(Assignment, assignment_id, with_for_update={"of": Assignment})
        if a is not None:
            session.info.setdefault(_LOCKED, set()).add(a.id)
    else:
        a = session.get(Assignment, assignment_id)
    return a if a is not None and a.user_id == user.id else None


_LOCKED = "labeling.locked_assignments"


@dataclass
class TaskView:
    """What the page and the API show of one assignment."""

    assignment: Assignment
    prompt: str
    completions: list[Completion]  # in display order, A first
    flags: list[str]
    k: int
    is_demo: bool
    labels: list[str] = field(default_factory=list)
    guideline_version: int | None = None


def task_view(*, session: Session, assignment: Assignment) -> TaskView:
    task = assignment.task
    prompt_text, flags, guideline_version = session.execute(
        select(Prompt.text, PromptSet.flags, _guideline_version())
        .join(PromptSet, PromptSet.id == Prompt.prompt_set_id)
        .where(Prompt.id == task.prompt_id)
    ).one()
    by_id = {c.id: c for c in task.completions}
    shown = [by_id[i] for i in assignment.display_order if i in by_id]
    shown += [c for c in task.completions if c.id not in set(assignment.display_order)]
    version_ids = {c.model_version_id for c in shown if c.model_version_id is not None}
    is_demo = bool(version_ids) and bool(
        session.scalar(
            select(func.count())
            .select_from(ModelVersion)
            .where(ModelVersion.id.in_(version_ids), ModelVersion.is_demo.is_(True))
        )
    )
    labels = [letter(i) for i in range(len(shown))]
    return TaskView(
        assignment=assignment,
        prompt=prompt_text,
        completions=shown,
        flags=list(flags or []),
        k=len(shown),
        is_demo=is_demo,
        labels=labels,
        guideline_version=guideline_version,
    )


def letter(i: int) -> str:
    """The label of the i-th output shown: A, B, C, …."""
    return chr(ord("A") + i) if i < 26 else f"Z{i - 25}"


def queue_position(*, session: Session, user: User, now: datetime | None = None) -> tuple[int, int]:
    """("Task x of y"): x counts the labeler's finished tasks plus this one, y adds what is
    still open to them."""
    now = now or utcnow()
    done = int(
        session.scalar(
            select(func.count())
            .select_from(Assignment)
            .where(
                Assignment.user_id == user.id,
                Assignment.state.in_([AssignmentState.submitted, AssignmentState.skipped]),
            )
        )
        or 0
    )
    live_count = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.task_id == Task.id, _live(now))
        .correlate(Task)
        .scalar_subquery()
    )
    had = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user.id)
    left = int(
        session.scalar(
            select(func.count())
            .select_from(Task)
            .join(PromptSet, PromptSet.id == Task.prompt_set_id)
            .where(
                Task.status == TaskStatus.open,
                PromptSet.status == SetStatus.active,
                ~had,
                Task.label_count + live_count < PromptSet.overlap,
            )
        )
        or 0
    )
    return done + 1, done + 1 + left


# --- submitting ---------------------------------------------------------------------------------


def dense_ranks(ranks: dict[int, int]) -> dict[int, int]:
    """Any order-preserving ranks (dense, competition, gaps) to dense: 1 = best, ties share."""
    levels = {r: i + 1 for i, r in enumerate(sorted(set(ranks.values())))}
    return {cid: levels[r] for cid, r in ranks.items()}


def inconsistencies(ranks: dict[int, int], ratings: dict[int, int]) -> list[tuple[int, int]]:
    """Pairs (better, worse) where the lower-ranked output has a strictly higher rating."""
    out = []
    for a, ra in ranks.items():
        for b, rb in ranks.items():
            if ra < rb and a in ratings and b in ratings and ratings[b] > ratings[a]:
                out.append((a, b))
    return out


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
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= k:
            raise SubmissionInvalid(f"ranks.{cid}", f"rank must be a whole number from 1 to {k}")
        clean_ranks[cid] = value
    missing = valid - set(clean_ranks)
    if missing:
        raise SubmissionInvalid("ranks", f"every output needs a rank; missing: {sorted(missing)}")
    if min(clean_ranks.values()) != 1:
        raise SubmissionInvalid("ranks", "the best output(s) must have rank 1")
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


def _check_lease(session: Session, assignment: Assignment, now: datetime) -> None:
    """An expired lease is honoured only while the task still needs labels (checked under the
    task's lock, so two late submitters cannot both take the last place)."""
    if assignment.state == AssignmentState.active and assignment.lease_expires_at > now:
        return
    _lock_task(session, assignment.task_id)
    room = _room(session, assignment.task_id, assignment.user_id, now, excluding=assignment.id)
    if not room.has_room:
        raise SubmissionRefused(
            "Your lease on this task expired and the task already has all the labels it needs, "
            "so this submission was not stored. Take the next task."
        )


def _lock_assignment(session: Session, assignment: Assignment) -> Annotation | None:
    """Serialise submissions of one assignment (a double click, a retried request); returns the
    annotation a previous one stored, if any."""
    if assignment.id not in session.info.get(_LOCKED, ()):
        session.refresh(assignment, ["state", "lease_expires_at"], with_for_update=True)
    if assignment.state in (AssignmentState.active, AssignmentState.expired):
        return None  # the state changes in the same transaction that stores an annotation
    return existing_annotation(session=session, assignment=assignment)


def _time_spent(assignment: Assignment, now: datetime, client_ms: int | None) -> int:
    # The client's own measure (it pauses nothing, but it is what the labeler saw), never more
    # than the time the server has known of the assignment.
    server_ms = max(0, int((now - assignment.created_at).total_seconds() * 1000))
    if client_ms is None:
        return min(server_ms, MAX_TIME_MS)
    return max(0, min(int(client_ms), server_ms, MAX_TIME_MS))


def existing_annotation(*, session: Session, assignment: Assignment) -> Annotation | None:
    return session.scalars(select(Annotation).where(Annotation.assignment_id == assignment.id)).first()


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
    now = now or utcnow()
    done = _lock_assignment(session, assignment)
    if done is not None:
        return done
    if assignment.state not in (AssignmentState.active, AssignmentState.expired):
        raise SubmissionRefused(f"This assignment is already {assignment.state}.")
    task = assignment.task
    ps_flags, overlap, guideline_version = session.execute(
        select(PromptSet.flags, PromptSet.overlap, _guideline_version()).where(
            PromptSet.id == task.prompt_set_id
        )
    ).one()
    completion_ids = [c.id for c in task.completions]
    clean_ranks, clean_ratings, clean_flags = _validate(
        completion_ids=completion_ids,
        set_flags=list(ps_flags or []),
        ranks=ranks,
        ratings=ratings,
        flags=flags,
    )
    if notes is not None and not isinstance(notes, str):
        raise SubmissionInvalid("notes", "notes must be text")
    if len(notes or "") > MAX_NOTES:
        raise SubmissionInvalid("notes", f"notes are limited to {MAX_NOTES} characters")
    if "\x00" in (notes or ""):  # PostgreSQL cannot store it: a 422, not a DataError (500)
        raise SubmissionInvalid("notes", "notes cannot contain a NUL character (\\u0000)")
    clashes = inconsistencies(clean_ranks, clean_ratings)
    if clashes and not confirm_inconsistent:
        raise SubmissionInvalid(
            "confirm_inconsistent",
            f"{len(clashes)} lower-ranked output(s) have a higher rating than one ranked above "
            "them: fix the ranks or ratings, or confirm",
        )
    _check_lease(session, assignment, now)
    annotation = Annotation(
        assignment_id=assignment.id,
        task_id=task.id,
        user_id=assignment.user_id,
        guideline_version=guideline_version,
        notes=(notes or "").strip(),
        time_spent_ms=_time_spent(assignment, now, time_spent_ms),
        inconsistency_confirmed=bool(clashes),
        created_at=now,
    )
    position = {cid: i for i, cid in enumerate(assignment.display_order)}
    dense = dense_ranks(clean_ranks)
    annotation.items = [
        AnnotationItem(
            completion_id=cid,
            rank=dense[cid],
            rating=clean_ratings.get(cid),
            flags=clean_flags[cid],
            position=position.get(cid),
        )
        for cid in completion_ids
    ]
    session.add(annotation)
    assignment.state = AssignmentState.submitted
    assignment.finished_at = now
    session.flush()
    # In the database, not read-modify-write in Python: concurrent submitters of one task each
    # add exactly one (the UPDATE takes the row lock).
    count = session.execute(
        update(Task)
        .where(Task.id == task.id)
        .values(label_count=Task.label_count + 1)
        .returning(Task.label_count)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    if count >= int(overlap or 1):
        session.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(status=TaskStatus.closed)
            .execution_options(synchronize_session=False)
        )
    session.expire(task, ["label_count", "status"])
    return annotation


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
    now = now or utcnow()
    if reason not in SKIP_REASONS:
        raise SubmissionInvalid("skip", f"reason must be one of: {', '.join(SKIP_REASONS)}")
    if not isinstance(notes, str) or len(notes) > MAX_NOTES:
        raise SubmissionInvalid("notes", f"notes must be text of at most {MAX_NOTES} characters")
    if "\x00" in notes:
        raise SubmissionInvalid("notes", "notes cannot contain a NUL character (\\u0000)")
    done = _lock_assignment(session, assignment)
    if done is not None:
        return done
    if assignment.state not in (AssignmentState.active, AssignmentState.expired):
        raise SubmissionRefused(f"This assignment is already {assignment.state}.")
    annotation = Annotation(
        assignment_id=assignment.id,
        task_id=assignment.task_id,
        user_id=assignment.user_id,
        guideline_version=session.scalar(select(_guideline_version())),
        skip_reason=reason,
        notes=notes.strip(),
        time_spent_ms=_time_spent(assignment, now, time_spent_ms),
        created_at=now,
    )
    session.add(annotation)
    assignment.state = AssignmentState.skipped
    assignment.finished_at = now
    session.flush()
    return annotation
