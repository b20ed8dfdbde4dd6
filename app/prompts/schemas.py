from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
