"""JSON shapes of the labeling API (the same rules as the page; the service does the checking)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.errors import LongText


class CompletionOut(BaseModel):
    id: int
    text: str


class MessageOut(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class DraftOut(BaseModel):
    completion_id: int
    text: str


class TaskOut(BaseModel):
    """A task given to you. `kind` "ranking": rank and rate its completions, then POST the
    annotation. `kind` "demonstration": write the assistant's reply to `messages` (from scratch,
    or by editing `draft` when there is one), then POST the demonstration."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "assignment_id": 7,
                    "prompt": "System: Answer in verse.\n\nUser: Write a haiku about rain.",
                    "messages": [
                        {"role": "system", "content": "Answer in verse."},
                        {"role": "user", "content": "Write a haiku about rain."},
                    ],
                    "completions": [
                        {"id": 31, "text": "Soft rain on the roof..."},
                        {"id": 32, "text": "Rain falls."},
                    ],
                    "flags": ["hallucination (makes up information)", "expresses an opinion"],
                    "k": 2,
                    "lease_expires_at": "2026-11-20T12:30:00Z",
                    "is_demo": False,
                    "guideline_version": 3,
                }
            ]
        }
    )

    kind: Literal["ranking", "demonstration"] = "ranking"
    assignment_id: int
    prompt: str = Field(
        description="The conversation as readable text: a lone user message exactly as written, "
        "otherwise `Role: content` turns, blank-line apart."
    )
    messages: list[MessageOut] = Field(
        description="The conversation the completions reply to, ending with the user's turn "
        "(a plain instruction is one user message)."
    )
    completions: list[CompletionOut] = Field(
        description="In the order to show them (A first); empty for a demonstration."
    )
    flags: list[str] = Field(description="The yes/no flags this prompt set asks about.")
    k: int
    lease_expires_at: datetime = Field(description="After this others may take the task.")
    is_demo: bool = Field(description="Some completions come from the small local demo model.")
    guideline_version: int | None = None
    draft: DraftOut | None = Field(
        None,
        description="A demonstration: one completion of the current policy to start from (null: "
        "none yet; drafts are written in the background after the import).",
    )


class AnnotationIn(BaseModel):
    """A ranking (ranks, ratings, flags, notes) or a skip (`{"skip": "unclear"}`).

    Ranks: 1 = best; equal ranks are ties; dense (1, 1, 2, 3) and competition (1, 1, 3, 4)
    forms are both accepted and stored dense. Ratings: 1 (worst) to 7 (best) for every
    completion. Flags: only the prompt set's. Keys are completion ids as strings.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "ranks": {"31": 1, "32": 2},
                    "ratings": {"31": 6, "32": 3},
                    "flags": {"32": ["hallucination (makes up information)"]},
                    "notes": "B invents a date.",
                },
                {"skip": "unclear", "notes": "The instruction is cut off."},
            ]
        },
    )

    # Strict: JSON true, "2" or 2.0 are refused as the page and the service refuse them, not
    # quietly read as numbers.
    ranks: dict[str, StrictInt] | None = None
    ratings: dict[str, StrictInt] | None = None
    flags: dict[str, list[str]] | None = None
    notes: LongText = ""
    skip: str | None = Field(None, description="unclear, harmful, broken or other")
    time_spent_ms: int | None = Field(None, ge=0, description="As measured by the client; clamped.")
    confirm_inconsistent: bool = Field(
        False, description="Submit even though a lower-ranked output has a higher rating."
    )


class AnnotationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 12,
                    "assignment_id": 7,
                    "task_id": 3,
                    "skipped": None,
                    "ranks": {"31": 1, "32": 2},
                    "ratings": {"31": 6, "32": 3},
                    "flags": {"31": [], "32": ["hallucination (makes up information)"]},
                    "notes": "",
                    "time_spent_ms": 41250,
                    "guideline_version": 3,
                    "inconsistency_confirmed": False,
                    "created_at": "2026-11-20T12:01:00Z",
                }
            ]
        }
    )

    id: int
    assignment_id: int
    task_id: int
    skipped: str | None = Field(description="The skip reason, or null for a ranking.")
    ranks: dict[str, int] = Field(description="Dense: 1 = best, ties share a rank.")
    ratings: dict[str, int | None]
    flags: dict[str, list[str]]
    notes: str
    time_spent_ms: int | None
    guideline_version: int | None
    inconsistency_confirmed: bool
    created_at: datetime
    next: TaskOut | None = Field(
        None,
        description="With `?next=true`: your next task (as GET /tasks/next answers; null when none "
        "is left), so that labeling takes one round trip per task.",
    )


class DemonstrationIn(BaseModel):
    """A written reply (`{"reply": "...", "draft_completion_id": null}`) or a skip
    (`{"skip": "unclear"}`). `draft_completion_id`: the task's draft when the reply was written
    by editing it (its edit distance is stored), null when written from scratch. The reply must
    not be empty, and the conversation with it must fit the token limit after the chat template."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"reply": "Soft rain on the roof,\nthe gutters hum along.", "draft_completion_id": None},
                {"reply": "Rain taps the window.", "draft_completion_id": 31, "time_spent_ms": 52000},
                {"skip": "unclear", "notes": "The instruction is cut off."},
            ]
        },
    )

    reply: str | None = Field(None, description="The assistant's reply, as the labeler wrote it.")
    draft_completion_id: StrictInt | None = None
    notes: LongText = ""
    skip: str | None = Field(None, description="unclear, harmful, broken or other")
    time_spent_ms: int | None = Field(None, ge=0, description="As measured by the client; clamped.")


class DemonstrationOut(BaseModel):
    """What was stored: the reply with its draft marks, or the skip (as in AnnotationOut)."""

    id: int = Field(description="The annotation's id.")
    assignment_id: int
    task_id: int
    skipped: str | None = Field(description="The skip reason, or null for a written reply.")
    reply: str | None = Field(description="As stored (trimmed at the ends); null for a skip.")
    draft_used: bool
    draft_completion_id: int | None
    edit_distance: int | None = Field(description="Characters changed from the draft (Levenshtein).")
    token_count: int | None = Field(description="The conversation with the reply, after the chat template.")
    notes: str
    time_spent_ms: int | None
    guideline_version: int | None
    created_at: datetime
