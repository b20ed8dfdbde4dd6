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


class TaskOut(BaseModel):
    """A task given to you: rank and rate its completions, then POST the annotation."""

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

    assignment_id: int
    prompt: str = Field(
        description="The conversation as readable text: a lone user message exactly as written, "
        "otherwise `Role: content` turns, blank-line apart."
    )
    messages: list[MessageOut] = Field(
        description="The conversation the completions reply to, ending with the user's turn "
        "(a plain instruction is one user message)."
    )
    completions: list[CompletionOut] = Field(description="In the order to show them (A first).")
    flags: list[str] = Field(description="The yes/no flags this prompt set asks about.")
    k: int
    lease_expires_at: datetime = Field(description="After this others may take the task.")
    is_demo: bool = Field(description="Some completions come from the small local demo model.")
    guideline_version: int | None = None


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
