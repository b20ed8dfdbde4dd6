from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ProgressOut(BaseModel):
    total: int = Field(description="Prompts in the set.")
    done: int = Field(description="Prompts whose K completions exist (their tasks are open).")
    rate_per_s: float | None
    eta_seconds: float | None
    job: dict[str, Any] | None


class PromptSetOut(BaseModel):
    id: int
    name: str
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
