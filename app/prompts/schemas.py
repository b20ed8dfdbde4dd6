from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from app.prompts.models import PROMPT_CATEGORIES


class ProgressOut(BaseModel):
    total: int = Field(description="Prompts in the set.")
    done: int = Field(
        description="Prompts whose K completions exist (their tasks are open); of a demonstration "
        "set, tasks whose draft is written (its tasks are open from the start)."
    )
    rate_per_s: float | None
    eta_seconds: float | None
    job: dict[str, Any] | None
    demonstrations_written: int | None = Field(
        None, description="A demonstration set: replies written so far (skips not counted)."
    )
    demonstrations_needed: int | None = Field(None, description="A demonstration set: tasks x overlap.")


class PromptSetOut(BaseModel):
    id: int
    name: str
    kind: str = Field(description="ranking (rank K completions) or demonstration (write the reply).")
    k: int
    overlap: int
    sampling: dict[str, Any]
    policy_version_id: int | None
    compare_version_id: int | None
    is_demo: bool = Field(description="Its completions come from the small local demo model.")
    flags: list[str] = Field(description="The yes/no flags labelers tick for each completion.")
    status: str
    source_filename: str | None
    report: dict[str, Any] = Field(description="rows, imported, duplicates, duplicate_lines, job_id.")
    created_at: datetime
    progress: ProgressOut


class ProposalIn(BaseModel):
    """A prompt you wrote, for a set that takes written prompts; checked by the rules of an upload."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prompt_set_id": 3,
                    "messages": [
                        {"role": "system", "content": "You are a patient tutor."},
                        {"role": "user", "content": "Explain photosynthesis to a ten-year-old."},
                    ],
                    "category": "open QA",
                }
            ]
        }
    )

    prompt_set_id: int = Field(description="The set you write for; it must allow written prompts.")
    messages: list[Any] = Field(
        description='The conversation: [{"role": "system"|"user"|"assistant", "content": "..."}], '
        "a system message only first, ending with a user turn."
    )
    category: str = Field(
        description="One of InstructGPT's categories.",
        json_schema_extra={"enum": cast(Any, PROMPT_CATEGORIES)},
    )


class ProposalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from a PromptProposal

    id: int
    prompt_set_id: int | None = Field(description="The set it was written for.")
    messages: list[dict[str, str]] = Field(description="As written (normalised).")
    category: str
    status: str = Field(description="pending, accepted or rejected.")
    reason: str | None = Field(description="Why it was rejected.")
    prompt_id: int | None = Field(description="The prompt it became, when accepted (possibly edited).")
    created_at: datetime
    reviewed_at: datetime | None
