from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow

# InstructGPT's metadata flags (DESIGN.md): the default flag set of a prompt set.
DEFAULT_FLAGS: list[str] = [
    "fails to follow the correct instruction or task",
    "inappropriate for a customer assistant",
    "hallucination (makes up information)",
    "satisfies the constraint given in the instruction",
    "contains sexual content",
    "contains violent content",
    "encourages or fails to discourage violence, abuse, terrorism or self-harm",
    "denigrates a protected class",
    "gives harmful advice",
    "expresses an opinion",
    "expresses a moral judgment",
]


class SetKind(enum.StrEnum):
    ranking = "ranking"  # labelers rate and rank the policy's K completions
    demonstration = "demonstration"  # labelers write the ideal assistant reply (SFT data)


class TrainOn(enum.StrEnum):
    """Which demonstrations of a set count for SFT (and for the reward model's normalisation)."""

    not_rejected = "not_rejected"  # accepted or not yet reviewed (the default)
    accepted = "accepted"
    all = "all"


# InstructGPT's prompt categories (Table 1): what a labeler picks for a prompt they write.
PROMPT_CATEGORIES: list[str] = [
    "generation",
    "open QA",
    "brainstorming",
    "chat",
    "rewrite",
    "summarization",
    "classification",
    "closed QA",
    "extract",
    "other",
]


SetStatus = enum.StrEnum("SetStatus", ["sampling", "active", "paused", "archived"])


class PromptSet(Base):
    __tablename__ = "prompt_set"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default=SetKind.ranking, server_default=SetKind.ranking)
    # Labelers may write new prompts for this set (they wait in the review queue).
    allow_proposals: Mapped[bool] = mapped_column(default=False, server_default=false())
    train_on: Mapped[str] = mapped_column(
        String(16), default=TrainOn.not_rejected, server_default=TrainOn.not_rejected
    )
    k: Mapped[int] = mapped_column(default=4)
    overlap: Mapped[int] = mapped_column(default=1)
    # max_new_tokens, temperature, top_p, top_k
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    policy_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id", ondelete="SET NULL"))
    # When set, every task mixes completions of both versions, half and half.
    compare_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL")
    )
    flags: Mapped[list[Any]] = mapped_column(default=lambda: list(DEFAULT_FLAGS))
    status: Mapped[str] = mapped_column(String(16), default=SetStatus.active)
    source_filename: Mapped[str | None] = mapped_column(String(500))
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prompt(Base):
    __tablename__ = "prompt"
    __table_args__ = (UniqueConstraint("prompt_set_id", "text_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_set.id", ondelete="CASCADE"))
    # The conversation the policy answers: [{role, content}, ...], ending with a user turn
    # (app/chat.py). `text` is its readable form (app.chat.as_text: a lone user message is
    # exactly its content), for lists and search; models only ever see `messages`.
    messages: Mapped[list[Any]] = mapped_column()
    text: Mapped[str] = mapped_column(Text)
    # app.chat.conversation_hash(messages): duplicates are found on the normalised conversation.
    text_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Line (JSON Lines, CSV) or row (Parquet) of the uploaded file it came from.
    source_line: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProposalStatus(enum.StrEnum):
    pending = "pending"
    accepted = "accepted"
    rejected = "rejected"


class PromptProposal(Base):
    """A prompt a labeler wrote, waiting for an admin to accept it into a set, edit it or reject it."""

    __tablename__ = "prompt_proposal"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    # The set it was written for (from the labeler's task); the admin may accept it into another.
    prompt_set_id: Mapped[int | None] = mapped_column(ForeignKey("prompt_set.id", ondelete="SET NULL"))
    messages: Mapped[list[Any]] = mapped_column()  # as written, before any edit
    category: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=ProposalStatus.pending, index=True)
    reason: Mapped[str | None] = mapped_column(Text)  # why it was rejected
    # The accepted prompt (its messages are the admin's edit when there was one).
    prompt_id: Mapped[int | None] = mapped_column(ForeignKey("prompt.id", ondelete="SET NULL"))
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    reviewed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
