"""Plain typed factories for tests."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.deps import ANON_CSRF_COOKIE
from app.auth.models import Role, User
from app.ranking import dense_ranks
from app.runs import service as jobs
from app.runs.models import Job

if TYPE_CHECKING:
    from app.labeling.models import Annotation, Task
    from app.prompts.models import PromptSet
    from app.runs.models import ModelVersion

PASSWORD = "correct horse battery"
_seq = itertools.count(1)


def words(line: str) -> list[str]:
    """A line's words: command lines and vocabularies written as one line, not one word a line."""
    return line.split()


def chat(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    """A conversation: the system message when given, then the turns, user and assistant by
    turns from the user."""
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def count_rows(session: Session, model: Any) -> int:
    """How many rows the table of `model` holds."""
    return session.scalar(select(func.count()).select_from(model)) or 0


def make_user(
    session: Session, *, role: str = Role.labeler, username: str | None = None, password: str = PASSWORD
) -> User:
    return auth.create_user(
        session=session, username=username or f"{role}{next(_seq)}", password=password, role=role
    )


def make_job(session: Session, *, kind: str = "noop", params: dict[str, Any] | None = None, **kw: Any) -> Job:
    return jobs.enqueue(session=session, kind=kind, params=params, **kw)


def login(client: TestClient, user: User, password: str = PASSWORD) -> str:
    """Log the client in through the real form; returns the session's CSRF token."""
    client.get("/login")
    r = client.post(
        "/login",
        data={
            "username": user.username,
            "password": password,
            "csrf_token": client.cookies.get(ANON_CSRF_COOKIE, ""),
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    """The CSRF token the pages of a logged-in client carry."""
    import re

    page = client.get("/account/tokens").text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- prompt sets, tasks, annotations ----------------------------------------------------------


def make_model_version(
    session: Session,
    *,
    kind: str = "policy",
    name: str | None = None,
    is_active: bool = False,
    is_demo: bool = False,
    source: str = "test",
) -> ModelVersion:
    from app.runs.models import ModelVersion

    mv = ModelVersion(
        kind=kind, name=name or f"{kind}-{next(_seq)}", source=source, is_active=is_active, is_demo=is_demo
    )
    session.add(mv)
    session.flush()
    return mv


def make_prompt_set(
    session: Session,
    *,
    name: str | None = None,
    k: int = 4,
    overlap: int = 1,
    flags: list[str] | None = None,
    status: str = "active",
    kind: str = "ranking",
) -> PromptSet:
    from app.prompts.models import DEFAULT_FLAGS, PromptSet

    ps = PromptSet(
        name=name or f"set-{next(_seq)}",
        kind=kind,
        k=1 if kind == "demonstration" else k,
        overlap=overlap,
        status=status,
        flags=list(DEFAULT_FLAGS if flags is None else flags),
    )
    session.add(ps)
    session.flush()
    return ps


def make_task(
    session: Session,
    *,
    prompt_set: PromptSet,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    completions: list[str] | None = None,
    policy: ModelVersion | None = None,
    status: str = "open",
) -> Task:
    """A task with its prompt and K completions (texts default to distinct placeholders; of a
    demonstration set, none unless given: they are drafts); a conversation given as `messages`
    is checked and stored as an upload would store it."""
    from app.auth.security import sha256
    from app.chat import as_text, conversation_hash, parse_conversation
    from app.labeling.models import Completion, Task
    from app.prompts.models import Prompt

    n = next(_seq)
    if messages is not None:
        conv = parse_conversation(messages)
        p = Prompt(
            prompt_set_id=prompt_set.id, messages=conv, text=as_text(conv), text_hash=conversation_hash(conv)
        )
    else:
        text = prompt if prompt is not None else f"Prompt number {n}: say something kind."
        p = Prompt(
            prompt_set_id=prompt_set.id,
            messages=[{"role": "user", "content": text}],
            text=text,
            text_hash=sha256(text),
        )
    session.add(p)
    session.flush()
    task = Task(prompt_id=p.id, prompt_set_id=prompt_set.id, status=status)
    session.add(task)
    session.flush()
    if prompt_set.kind == "demonstration":
        texts = completions or []
    else:
        texts = completions or [f"Answer {i} to prompt {n}." for i in range(prompt_set.k)]
    for t in texts:
        session.add(
            Completion(
                task_id=task.id,
                text=t,
                finish_reason="stop",
                model_version_id=policy.id if policy else None,
                token_count=len(t.split()),
            )
        )
    session.flush()
    session.refresh(task)
    return task


def make_annotation(
    session: Session,
    *,
    task: Task,
    user: User,
    ranks: list[int],
    ratings: list[int] | None = None,
    flags: list[list[str]] | None = None,
    skip_reason: str | None = None,
    notes: str = "",
    time_spent_ms: int = 30_000,
) -> Annotation:
    """Rows as a submission would leave them; ranks/ratings/flags follow task.completions order
    (ranks are stored in dense normal form: 1 = best, ties share a rank)."""
    from datetime import timedelta

    from app.db import utcnow
    from app.labeling.models import Annotation, AnnotationItem, Assignment

    comps = task.completions
    order = [c.id for c in comps]
    a = Assignment(
        task_id=task.id,
        user_id=user.id,
        state="skipped" if skip_reason else "submitted",
        display_order=order,
        lease_expires_at=utcnow() + timedelta(minutes=30),
        finished_at=utcnow(),
    )
    session.add(a)
    session.flush()
    ann = Annotation(
        assignment_id=a.id,
        task_id=task.id,
        user_id=user.id,
        skip_reason=skip_reason,
        notes=notes,
        time_spent_ms=time_spent_ms,
    )
    session.add(ann)
    session.flush()
    if not skip_reason:
        dense = dense_ranks(ranks)
        for pos, c in enumerate(comps):
            session.add(
                AnnotationItem(
                    annotation_id=ann.id,
                    completion_id=c.id,
                    rank=dense[pos],
                    rating=ratings[pos] if ratings else None,
                    flags=list(flags[pos]) if flags else [],
                    position=pos,
                )
            )
        task.label_count += 1
    session.flush()
    session.refresh(ann)
    return ann


def make_prompt_row(prompt_set_id: int, text: str) -> Any:
    """An unsaved one-user-message prompt (for tests that add it themselves)."""
    from app.chat import conversation_hash, from_text
    from app.prompts.models import Prompt

    messages = from_text(text)
    return Prompt(
        prompt_set_id=prompt_set_id, messages=messages, text=text, text_hash=conversation_hash(messages)
    )


def make_demonstration(
    session: Session,
    *,
    prompt_set: PromptSet,
    user: User,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    reply: str = "A kind reply.",
    review_status: str = "unreviewed",
    edited_reply: str | None = None,
    draft_used: bool = False,
    edit_distance: int | None = None,
    skip_reason: str | None = None,
    task: Task | None = None,
) -> Annotation:
    """A labeler's demonstration (or skip) of a demonstration task, as a submission leaves it:
    a submitted assignment, its annotation and, unless skipped, the Demonstration row."""
    from datetime import timedelta

    from app.db import utcnow
    from app.labeling.models import Annotation, Assignment, Demonstration

    if task is None:
        task = make_task(session, prompt_set=prompt_set, prompt=prompt, messages=messages, completions=["d"])
    a = Assignment(
        task_id=task.id,
        user_id=user.id,
        state="skipped" if skip_reason else "submitted",
        display_order=[],
        lease_expires_at=utcnow() + timedelta(minutes=30),
        finished_at=utcnow(),
    )
    session.add(a)
    session.flush()
    ann = Annotation(
        assignment_id=a.id, task_id=task.id, user_id=user.id, skip_reason=skip_reason, guideline_version=1
    )
    session.add(ann)
    session.flush()
    if not skip_reason:
        session.add(
            Demonstration(
                annotation_id=ann.id,
                reply=reply,
                draft_used=draft_used,
                edit_distance=edit_distance,
                review_status=review_status,
                edited_reply=edited_reply,
            )
        )
        task.label_count += 1
    session.flush()
    return ann
