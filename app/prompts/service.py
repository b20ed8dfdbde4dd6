"""Prompt sets as the pages read them, their per-set settings, and one prompt at a time into a set
(a labeler's written prompt, accepted) by the rules of an upload. The upload itself is
app/prompts/upload.py; a set's tasks and sampling, app/prompts/sampling.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import chat
from app.chat import Conversation
from app.config import Settings
from app.errors import Conflict, Invalid
from app.labeling.models import Task, TaskStatus
from app.prompts.models import Prompt, PromptSet, TrainOn
from app.prompts.parsing import check_stored, check_tokens
from app.prompts.sampling import open_tasks
from app.prompts.tokens import token_counter, token_limit
from app.runs import policies
from app.runs.models import ModelVersion

# --- reading ---------------------------------------------------------------------------------


def list_sets(*, session: Session) -> list[PromptSet]:
    return list(session.scalars(select(PromptSet).order_by(PromptSet.id.desc())))


def get_set(*, session: Session, set_id: int) -> PromptSet | None:
    return session.get(PromptSet, set_id)


def get_set_by_name(*, session: Session, name: str) -> PromptSet | None:
    return session.scalar(select(PromptSet).where(PromptSet.name == name))


def sample_tasks(*, session: Session, prompt_set: PromptSet, limit: int = 20) -> list[Task]:
    return list(
        session.scalars(
            select(Task)
            .where(Task.prompt_set_id == prompt_set.id, Task.status != TaskStatus.sampling)
            .order_by(Task.id)
            .limit(limit)
        )
    )


def prompts_page(*, session: Session, prompt_set: PromptSet, limit: int = 50) -> list[Prompt]:
    return list(
        session.scalars(
            select(Prompt).where(Prompt.prompt_set_id == prompt_set.id).order_by(Prompt.id).limit(limit)
        )
    )


def versions_by_id(*, session: Session, ids: set[int]) -> dict[int, ModelVersion]:
    if not ids:
        return {}
    return {mv.id: mv for mv in session.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids)))}


# --- per-set settings ------------------------------------------------------------------------


def update_settings(*, session: Session, prompt_set: PromptSet, train_on: str, allow_proposals: bool) -> None:
    """Which demonstrations count for training, and whether labelers may write prompts for it."""
    if train_on not in set(TrainOn):
        raise Invalid("train_on", f"{train_on!r} is not one of: {', '.join(TrainOn)}")
    prompt_set.train_on = train_on
    prompt_set.allow_proposals = allow_proposals
    session.flush()


# --- one prompt at a time (a labeler's written prompt, accepted) -------------------------------


def check_conversation(
    *, session: Session, settings: Settings, prompt_set: PromptSet, value: Any, field: str = "messages"
) -> Conversation:
    """A conversation checked by the rules of an upload into `prompt_set` (app/chat.py's rules,
    storable text, the token limit of the set's policy), normalised; Invalid naming the place."""
    version = (
        policies.get_policy(session=session, version_id=prompt_set.policy_version_id)
        if prompt_set.policy_version_id is not None
        else policies.active_policy(session=session)
    )
    counter, _ = token_counter(version)
    max_tokens, limit_name = token_limit(
        settings=settings, version=version, sampling=prompt_set.sampling or {}
    )
    try:
        conv = chat.parse_conversation(value, field=field)
        check_stored(conv, field=field)
        check_tokens(conv, field=field, max_tokens=max_tokens, count_tokens=counter, limit_name=limit_name)
    except chat.ChatError as exc:
        raise Invalid(exc.field, exc.message) from None
    return conv


def find_duplicate(*, session: Session, prompt_set: PromptSet, messages: Conversation) -> Prompt | None:
    return session.scalar(
        select(Prompt).where(
            Prompt.prompt_set_id == prompt_set.id, Prompt.text_hash == chat.conversation_hash(messages)
        )
    )


def add_prompt(
    *,
    session: Session,
    prompt_set: PromptSet,
    messages: Conversation,
    meta: dict[str, Any] | None = None,
    created_by_id: int | None = None,
) -> Prompt:
    """One checked conversation into a set, with the task an imported prompt gets; Conflict
    naming the existing prompt when the set holds the same conversation."""
    existing = find_duplicate(session=session, prompt_set=prompt_set, messages=messages)
    if existing is not None:
        raise Conflict(
            f"The set {prompt_set.name!r} (id {prompt_set.id}) already holds this conversation "
            f"as prompt {existing.id}."
        )
    prompt = Prompt(
        prompt_set_id=prompt_set.id,
        messages=messages,
        text=chat.as_text(messages),
        text_hash=chat.conversation_hash(messages),
        meta=meta or {},
    )
    session.add(prompt)
    session.flush()
    open_tasks(session=session, prompt_set=prompt_set, created_by_id=created_by_id)
    return prompt
