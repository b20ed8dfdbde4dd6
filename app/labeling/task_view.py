"""What the labeling page and the API show of one assignment: the conversation, the outputs in
the order this labeler sees them (A first), the flags, and for the page its place in the queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, aliased

from app.auth.models import User
from app.chat import LABELS, Message
from app.db import utcnow
from app.labeling.claim import NOW, USER_ID, open_for
from app.labeling.models import Assignment, AssignmentState, Completion, Guideline, Task
from app.prompts.models import Prompt, PromptSet, SetKind
from app.runs.models import ModelVersion

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


@dataclass(frozen=True)
class Output:
    """One completion as shown."""

    id: int
    text: str


@dataclass
class TaskView:
    """What the page and the API show of one assignment."""

    assignment: Assignment
    prompt: str  # the conversation's readable text (app.chat.as_text)
    messages: list[Message]  # the conversation; the last turn is the user's, which the outputs answer
    completions: list[Output]  # in display order, A first
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


def letter(i: int) -> str:
    """The label of the i-th output shown: A, B, C, …."""
    return chr(ord("A") + i) if i < 26 else f"Z{i - 25}"


def guideline_version() -> Any:
    return select(func.max(Guideline.version)).scalar_subquery()


def _position_columns(user_id: Any = USER_ID, now: Any = NOW) -> tuple[Any, Any]:
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
        .where(open_for(user_id, now, other))
        .scalar_subquery()
    )
    return done, left


@cache
def _view_statement(with_position: bool) -> Any:
    """One statement: a row per completion (one of NULLs when there is none), with the prompt,
    flags, demo mark, guideline version, the set's kind, and for the page the queue position
    and the guideline text."""
    columns: list[Any] = [
        Completion.id,
        Completion.text,
        Prompt.text,
        PromptSet.flags,
        ModelVersion.is_demo,
        guideline_version(),
        Prompt.messages,
        PromptSet.kind,
    ]
    if with_position:
        latest = select(Guideline.body).order_by(Guideline.version.desc()).limit(1).scalar_subquery()
        columns += [*_position_columns(), latest]
    return (
        select(*columns)
        .select_from(Task)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .outerjoin(Completion, Completion.task_id == Task.id)  # a demonstration task may have none
        .outerjoin(ModelVersion, ModelVersion.id == Completion.model_version_id)
        .where(Task.id == bindparam("b_task_id"))
        .order_by(Completion.id)
    )


def task_view(
    *, session: Session, assignment: Assignment, with_position: bool = False, now: datetime | None = None
) -> TaskView:
    """The view in one statement."""
    params: dict[str, Any] = {"b_task_id": assignment.task_id}
    if with_position:
        params |= {"b_user_id": assignment.user_id, "b_now": now or utcnow()}
    rows = session.connection().execute(_view_statement(with_position), params).all()
    first = rows[0]
    by_id = {r[0]: Output(id=r[0], text=r[1]) for r in rows if r[0] is not None}
    order = [int(i) for i in assignment.display_order]
    shown = [by_id[i] for i in order if i in by_id]
    shown += [c for c in by_id.values() if c.id not in set(order)]
    return TaskView(
        assignment=assignment,
        prompt=first[2],
        messages=list(first[6]),
        completions=shown,
        flags=list(first[3] or []),
        k=len(shown),
        is_demo=any(bool(r[4]) for r in rows),
        labels=[letter(i) for i in range(len(shown))],
        kind=str(first[7]),
        guideline_version=first[5],
        position=(int(first[8]) + 1, int(first[8]) + 1 + int(first[9])) if with_position else None,
        guideline_body=first[10] if with_position else None,
    )


def queue_position(*, session: Session, user: User, now: datetime | None = None) -> tuple[int, int]:
    """("Task x of y"): x counts the labeler's finished tasks plus this one, y adds what is
    still open to them."""
    done, left = session.execute(select(*_position_columns(user.id, now or utcnow()))).one()
    return int(done) + 1, int(done) + 1 + int(left)
