"""Phase 2 of `preferences import`: the checked rows written as a prompt set with its tasks,
policy versions, system labelers, completions and annotations, by bulk INSERT ... RETURNING."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.chat import Conversation, conversation_hash
from app.errors import has_nul
from app.imports.parsing import ImportRefused, RowError, Unit, completion_key
from app.labeling.models import Annotation, AnnotationItem, Assignment, Completion, Task
from app.prompts.models import Prompt, PromptSet
from app.runs.models import ModelKind, ModelVersion

_NAME = re.compile(r"[^A-Za-z0-9_.-]+")  # what a system labeler's username may hold

Comps = list[tuple[Any, tuple[Any, str, str | None]]]  # (completion key, (source id, text, policy))


def system_users(session: Session, name: str, units: list[Unit]) -> dict[str, int]:
    """One inactive system account per source labeler of the file (imported-NAME[-LABELER])."""
    return {
        lab: system_user(session, f"imported-{name}" + (f"-{lab}" if lab else ""))
        for lab in sorted({u.labeler for u in units})
    }


def system_user(session: Session, username: str) -> int:
    username = _NAME.sub("-", username)[:64]
    existing = session.scalar(select(User).where(User.username == username))
    if existing is not None:
        if not existing.is_system:
            raise ImportRefused([RowError(0, "name", f"user {username!r} exists and is a person")], 1)
        return existing.id
    # "!" is no argon2 hash: nothing verifies against it, and is_system refuses logins anyway.
    user = User(
        username=username,
        password_hash="!",  # noqa: S106
        role=Role.labeler,
        is_system=True,
        is_active=False,
    )
    session.add(user)
    session.flush()
    return user.id


def _bulk(session: Session, model: Any, rows: list[dict[str, Any]]) -> list[int]:
    if not rows:
        return []
    result = session.execute(insert(model).returning(model.id, sort_by_parameter_order=True), rows)
    return [r[0] for r in result]


def check_name(session: Session, name: str) -> None:
    if not name or has_nul(name):
        raise ImportRefused([RowError(0, "name", "a set name is needed, without NUL characters")], 1)
    if session.scalar(select(PromptSet.id).where(PromptSet.name == name)) is not None:
        raise ImportRefused([RowError(0, "name", f"a prompt set called {name!r} exists")], 1)


def group_tasks(units: list[Unit]) -> tuple[dict[Any, list[Unit]], dict[Any, Comps]]:
    """Rows of one source task (rankings exports) share it, other rows get their own; each
    task's completions are the union of its rows' (a source id is one completion across rows)."""
    tasks: dict[Any, list[Unit]] = {}
    for u in units:
        tasks.setdefault(("g", u.group) if u.group is not None else ("l", u.line), []).append(u)
    comps_of: dict[Any, Comps] = {}
    for key, group in tasks.items():
        merged: dict[Any, tuple[Any, str, str | None]] = {}
        for u in group:
            for i, c in enumerate(u.completions):
                merged.setdefault(completion_key(u, i), c)
        comps_of[key] = list(merged.items())
        if len(comps_of[key]) < 2:
            raise ImportRefused([RowError(group[0].line, "completions", "the task has fewer than 2")], 1)
    return tasks, comps_of


def new_set(
    session: Session,
    *,
    name: str,
    filename: str,
    created_by_id: int | None,
    tasks: dict[Any, list[Unit]],
    comps_of: dict[Any, Comps],
    report: dict[str, Any],
) -> PromptSet:
    """The archived set that holds the import: K and overlap are the largest the rows have."""
    overlap = max(sum(1 for u in g if not u.skip_reason) for g in tasks.values())
    ps = PromptSet(
        name=name,
        k=max(len(c) for c in comps_of.values()),
        overlap=max(overlap, 1),
        status="archived",
        source_filename=filename,
        created_by_id=created_by_id,
        flags=[],
        report={"imported": report},
    )
    session.add(ps)
    session.flush()
    return ps


def policy_versions(session: Session, name: str, comps_of: dict[Any, Comps]) -> dict[str | None, int]:
    """One policy version for the file, or one per source policy (rankings exports)."""
    source = f"imported:{name}"
    versions: dict[str | None, int] = {}
    policies = {c[2] for cs in comps_of.values() for _, c in cs}
    for pol in sorted(policies, key=lambda p: (p is not None, p or "")):
        mv = ModelVersion(
            kind=ModelKind.policy,
            name=f"{source}" + (f"/{pol}" if pol else ""),
            source=source,
            is_active=False,
            config={"imported_policy": pol},
        )
        session.add(mv)
        session.flush()
        versions[pol] = mv.id
    return versions


def write_prompts(
    session: Session, set_id: int, convs: Iterable[tuple[Conversation, str, int | None]], now: datetime
) -> dict[str, int]:
    """One prompt per distinct conversation of `convs` ((messages, text, source line)), in the
    order first seen, keyed as an upload keys them (the conversation's hash): each key's prompt id."""
    rows: dict[str, dict[str, Any]] = {}
    for messages, text, line in convs:
        key = conversation_hash(messages)
        if key not in rows:
            rows[key] = dict(
                prompt_set_id=set_id,
                messages=messages,
                text=text,
                text_hash=key,
                meta={},
                source_line=line,
                created_at=now,
            )
    return dict(zip(rows, _bulk(session, Prompt, list(rows.values())), strict=True))


def write_tasks(
    session: Session, ps: PromptSet, tasks: dict[Any, list[Unit]], keys: list[Any], now: datetime
) -> list[int]:
    """One prompt per conversation (the set's unique key is its hash, as an upload stores it),
    then one closed task per source task."""
    firsts = (group[0] for group in tasks.values())
    prompt_ids = write_prompts(session, ps.id, ((u.messages, u.prompt, u.line) for u in firsts), now)
    return _bulk(
        session,
        Task,
        [
            {
                "prompt_id": prompt_ids[conversation_hash(tasks[key][0].messages)],
                "prompt_set_id": ps.id,
                "status": "closed",
                "label_count": sum(1 for u in tasks[key] if not u.skip_reason),
                "created_at": now,
            }
            for key in keys
        ],
    )


def write_completions(
    session: Session,
    keys: list[Any],
    task_ids: list[int],
    comps_of: dict[Any, Comps],
    versions: dict[str | None, int],
    now: datetime,
) -> dict[tuple[Any, Any], int]:
    """Every task's completions; (task key, completion key) -> completion id."""
    rows, row_keys = [], []
    for key, tid in zip(keys, task_ids, strict=True):
        for ck, c in comps_of[key]:
            rows.append(
                {
                    "task_id": tid,
                    "model_version_id": versions[c[2]],
                    "text": c[1],
                    "params": {},
                    "finish_reason": None,
                    "created_at": now,
                }
            )
            row_keys.append((key, ck))
    return dict(zip(row_keys, _bulk(session, Completion, rows), strict=True))


def write_annotations(
    session: Session,
    tasks: dict[Any, list[Unit]],
    keys: list[Any],
    task_ids: list[int],
    comp_id: dict[tuple[Any, Any], int],
    users: dict[str, int],
    now: datetime,
) -> None:
    """Each row as a finished assignment with its annotation (a skip, or ranks per output)."""
    ann_units: list[tuple[Unit, int, list[int]]] = []
    for key, tid in zip(keys, task_ids, strict=True):
        for u in tasks[key]:
            ann_units.append(
                (u, tid, [comp_id[(key, completion_key(u, i))] for i in range(len(u.completions))])
            )
    assign_ids = _bulk(
        session,
        Assignment,
        [
            {
                "task_id": tid,
                "user_id": users[u.labeler],
                "state": "skipped" if u.skip_reason else "submitted",
                "display_order": ids,
                "lease_expires_at": now,
                "finished_at": u.created_at or now,
                "created_at": now,
            }
            for u, tid, ids in ann_units
        ],
    )
    ann_ids = _bulk(
        session,
        Annotation,
        [
            {
                "assignment_id": aid,
                "task_id": tid,
                "user_id": users[u.labeler],
                "guideline_version": u.guideline_version,
                "skip_reason": u.skip_reason,
                "notes": u.notes,
                "time_spent_ms": u.time_spent_ms,
                "inconsistency_confirmed": False,
                "created_at": u.created_at or now,
            }
            for (u, tid, _), aid in zip(ann_units, assign_ids, strict=True)
        ],
    )
    items = [
        {
            "annotation_id": ann_id,
            "completion_id": cid,
            "rank": u.ranks[pos],
            "rating": u.ratings[pos] if u.ratings else None,
            "flags": u.flags[pos] if u.flags else [],
            "position": u.positions[pos] if u.positions else pos,
        }
        for (u, _, ids), ann_id in zip(ann_units, ann_ids, strict=True)
        if not u.skip_reason
        for pos, cid in enumerate(ids)
    ]
    if items:
        session.execute(insert(AnnotationItem), items)
