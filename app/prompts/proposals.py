"""Prompts written by labelers: proposed for a set that allows it, then accepted (into a set the
admin chooses, possibly edited), or rejected with a reason.

A written conversation is checked by the rules of an upload into the set (app/prompts/service.py
check_conversation: app/chat.py's rules, storable text, the set's token limit); an accepted one
becomes a Prompt through add_prompt, with the task an imported prompt of that set gets. The
proposal keeps what the labeler wrote; the prompt holds the admin's edit when there was one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.config import Settings
from app.db import newest_first, utcnow
from app.errors import MAX_ROW_ID, Conflict, Invalid, check_text, found
from app.prompts import service
from app.prompts.models import PROMPT_CATEGORIES, Prompt, PromptProposal, PromptSet, ProposalStatus

MAX_REASON = 2000


def open_sets(*, session: Session) -> list[PromptSet]:
    """The sets labelers may write prompts for."""
    return list(
        session.scalars(select(PromptSet).where(PromptSet.allow_proposals.is_(True)).order_by(PromptSet.name))
    )


def _set(session: Session, set_id: int) -> PromptSet | None:
    return session.get(PromptSet, set_id) if 1 <= set_id <= MAX_ROW_ID else None


def check_category(category: Any) -> str:
    if category not in PROMPT_CATEGORIES:
        raise Invalid(
            "category", f"{category!r} is not a category: use one of {', '.join(PROMPT_CATEGORIES)}"
        )
    return str(category)


def propose(
    *, session: Session, settings: Settings, user: User, prompt_set_id: int, messages: Any, category: Any
) -> PromptProposal:
    """Store a labeler's written prompt for review; Invalid naming the field when refused."""
    prompt_set = _set(session, prompt_set_id)
    if prompt_set is None or not prompt_set.allow_proposals:
        raise Invalid("prompt_set_id", f"no prompt set with id {prompt_set_id} takes written prompts")
    cat = check_category(category)
    conv = service.check_conversation(
        session=session, settings=settings, prompt_set=prompt_set, value=messages
    )
    proposal = PromptProposal(user_id=user.id, prompt_set_id=prompt_set.id, messages=conv, category=cat)
    session.add(proposal)
    session.flush()
    return proposal


def get(*, session: Session, proposal_id: int) -> PromptProposal:
    return found(session.get(PromptProposal, proposal_id), f"No proposed prompt with id {proposal_id}.")


def _pending(proposal: PromptProposal) -> None:
    if proposal.status != ProposalStatus.pending:
        raise Conflict(f"Proposed prompt {proposal.id} was already {proposal.status}.")


def accept(
    *,
    session: Session,
    settings: Settings,
    proposal: PromptProposal,
    reviewer: User,
    prompt_set_id: int,
    messages: Any = None,
) -> Prompt:
    """Into the chosen set, as written or as edited (`messages`, checked like the original);
    Conflict naming the existing prompt when the set has the conversation already."""
    _pending(proposal)
    prompt_set = _set(session, prompt_set_id)
    if prompt_set is None:
        raise Invalid("prompt_set_id", f"no prompt set with id {prompt_set_id}")
    conv = service.check_conversation(
        session=session,
        settings=settings,
        prompt_set=prompt_set,
        value=proposal.messages if messages is None else messages,
    )
    prompt = service.add_prompt(
        session=session,
        prompt_set=prompt_set,
        messages=conv,
        meta={"category": proposal.category, "proposal_id": proposal.id, "edited": conv != proposal.messages},
        created_by_id=reviewer.id,
    )
    proposal.status, proposal.prompt_id = ProposalStatus.accepted, prompt.id
    _reviewed(proposal, reviewer)
    return prompt


def reject(*, session: Session, proposal: PromptProposal, reviewer: User, reason: str) -> None:
    _pending(proposal)
    reason = check_text(reason, field="reason", max_length=MAX_REASON).strip()
    if not reason:
        raise Invalid("reason", "say why, so the labeler learns from it")
    proposal.status, proposal.reason = ProposalStatus.rejected, reason
    _reviewed(proposal, reviewer)
    session.flush()


def _reviewed(proposal: PromptProposal, reviewer: User) -> None:
    proposal.reviewed_by_id, proposal.reviewed_at = reviewer.id, utcnow()


@dataclass
class Row:
    proposal: PromptProposal
    author: str
    set_name: str | None  # the set it was written for
    prompt_set_id: int | None  # where the accepted prompt went
    prompt_set_name: str | None


def listing(
    *,
    session: Session,
    user_id: int | None,
    status: str | None = None,
    proposal_id: int | None = None,
    limit: int = 200,
) -> list[Row]:
    """Newest first: one labeler's (`user_id`), or everyone's (None, the admins' queue)."""
    query = (
        select(PromptProposal, User.username, PromptSet.name, Prompt.prompt_set_id)
        .join(User, User.id == PromptProposal.user_id)
        .outerjoin(PromptSet, PromptSet.id == PromptProposal.prompt_set_id)
        .outerjoin(Prompt, Prompt.id == PromptProposal.prompt_id)
    )
    query = newest_first(
        query,
        PromptProposal.created_at,
        PromptProposal.id,
        (PromptProposal.user_id, user_id),
        (PromptProposal.status, status),
        (PromptProposal.id, proposal_id),
        limit=limit,
    )
    rows = session.execute(query).all()
    names = dict(session.execute(select(PromptSet.id, PromptSet.name)).all()) if rows else {}
    return [
        Row(
            proposal=p,
            author=author,
            set_name=set_name,
            prompt_set_id=target,
            prompt_set_name=names.get(target),
        )
        for p, author, set_name, target in rows
    ]
