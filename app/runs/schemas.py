"""JSON shapes of the jobs and models API (/api/v1/jobs, /api/v1/models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    progress: float = Field(description="0 to 1")
    message: str
    params: dict[str, Any]
    after_id: int | None = Field(description="The job this one waits for (a chain).")
    attempts: int
    cancel_requested: bool
    created_by: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    seconds_left: float | None = Field(None, description="Estimate while running, else null.")


class JobDetailOut(JobOut):
    result: dict[str, Any] | None
    error: str | None
    log_tail: str
    metrics: dict[str, list[tuple[int, float]]] = Field(
        description="metric name -> [[step, value], ...] in step order"
    )
    chain: list[int] = Field(description="Ids of the chained jobs, first step first; [] if alone.")


class JobListOut(BaseModel):
    jobs: list[JobOut]
    counts: dict[str, int] = Field(description="Jobs per status over the whole queue.")


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    name: str
    source: str
    path: str | None
    parent_id: int | None
    job_id: int | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    is_active: bool
    is_demo: bool
    created_at: datetime
