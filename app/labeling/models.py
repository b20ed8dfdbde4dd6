from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, partial_index, partial_unique, utcnow


class Guideline(Base):
    """Labeling instructions in markdown; each edit is a new version."""

    __tablename__ = "guideline"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(unique=True)
    body: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskStatus(enum.StrEnum):
    sampling = "sampling"  # its completions are not all there yet
    open = "open"  # labelers may take it
    closed = "closed"  # enough labels, or withdrawn


class Task(Base):
    """One prompt with its K completions: the unit a labeler sees."""

    __tablename__ = "task"
    __table_args__ = (
        # A sampling job claimed again never gives a prompt a second set of completions.
        UniqueConstraint("prompt_id", "sampling_job_id"),
        Index("ix_task_prompt_set_id_status", "prompt_set_id", "status"),
        # The queue: open tasks in id order, so taking the next one stops at the first with room.
        partial_index("ix_task_open", "id", where="status = 'open'"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id", ondelete="CASCADE"), index=True)
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_set.id", ondelete="CASCADE"))
    sampling_job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.sampling)
    # Submitted (not skipped) annotations, kept with the row so assignment is one indexed query.
    label_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completions: Mapped[list[Completion]] = relationship(
        back_populates="task", order_by="Completion.id", lazy="selectin"
    )


class Completion(Base):
    __tablename__ = "completion"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id", ondelete="SET NULL"))
    text: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int | None]
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    token_count: Mapped[int | None]
    # Still identical to another completion of its task after the allowed resampling tries.
    is_duplicate: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    task: Mapped[Task] = relationship(back_populates="completions")


class AssignmentState(enum.StrEnum):
    active = "active"
    submitted = "submitted"
    skipped = "skipped"
    expired = "expired"


class Assignment(Base):
    """A task given to one labeler, with a lease and the order its outputs were shown in."""

    __tablename__ = "assignment"
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        # One active assignment per labeler: what keeps two tabs from taking two tasks at once.
        partial_unique("uq_assignment_user_id_active", "user_id", where="state = 'active'"),
        # A labeler's history in task order: "not had by this labeler" is a merge with the queue.
        Index("ix_assignment_user_id_task_id", "user_id", "task_id"),
        # A task's live leases, counted by each claim: an index-only scan.
        partial_index(
            "ix_assignment_task_id_active", "task_id", "lease_expires_at", where="state = 'active'"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=AssignmentState.active)
    display_order: Mapped[list[Any]] = mapped_column(default=list)  # completion ids as shown, A first
    lease_expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    task: Mapped[Task] = relationship(lazy="joined")


class Annotation(Base):
    """One labeler's judgment of one task, or their reason for skipping it."""

    __tablename__ = "annotation"

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignment.id", ondelete="CASCADE"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    guideline_version: Mapped[int | None]
    skip_reason: Mapped[str | None] = mapped_column(String(32))
    notes: Mapped[str] = mapped_column(Text, default="")
    time_spent_ms: Mapped[int | None]
    # The labeler saw the ratings-contradict-ranks warning and submitted anyway.
    inconsistency_confirmed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    items: Mapped[list[AnnotationItem]] = relationship(
        back_populates="annotation", lazy="selectin", cascade="all, delete-orphan"
    )


class AnnotationItem(Base):
    """One completion's place in an annotation: rank (1 = best, ties share), rating 1-7, flags."""

    __tablename__ = "annotation_item"
    __table_args__ = (UniqueConstraint("annotation_id", "completion_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotation.id", ondelete="CASCADE"))
    completion_id: Mapped[int] = mapped_column(ForeignKey("completion.id", ondelete="CASCADE"))
    rank: Mapped[int]
    rating: Mapped[int | None]
    flags: Mapped[list[Any]] = mapped_column(default=list)
    position: Mapped[int | None]  # 0 = shown first (A)
    annotation: Mapped[Annotation] = relationship(back_populates="items")


class ReviewStatus(enum.StrEnum):
    unreviewed = "unreviewed"
    accepted = "accepted"
    rejected = "rejected"


class Demonstration(Base):
    """The ideal assistant reply a labeler wrote for a demonstration task (InstructGPT step 1).

    It hangs off the task's annotation, which holds what every task kind shares (labeler, time
    spent, guideline version, skip); a skipped demonstration task has an annotation and no row here.
    """

    __tablename__ = "demonstration"

    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotation.id", ondelete="CASCADE"), unique=True)
    reply: Mapped[str] = mapped_column(Text)  # as the labeler wrote it
    # "Start from a draft": the policy completion the labeler edited, and how far they moved it
    # (characters, Levenshtein); edited drafts are different data from replies written from scratch.
    draft_used: Mapped[bool] = mapped_column(default=False)
    draft_completion_id: Mapped[int | None] = mapped_column(ForeignKey("completion.id", ondelete="SET NULL"))
    edit_distance: Mapped[int | None]
    token_count: Mapped[int | None]
    review_status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.unreviewed, index=True)
    review_reason: Mapped[str | None] = mapped_column(Text)
    # A reviewer's edit; the labeler's `reply` is kept beside it, and training uses this one.
    edited_reply: Mapped[str | None] = mapped_column(Text)
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    reviewed_at: Mapped[datetime | None]
    annotation: Mapped[Annotation] = relationship(lazy="joined")

    @property
    def final_reply(self) -> str:
        return self.edited_reply if self.edited_reply is not None else self.reply
