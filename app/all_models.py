"""Imports every domain's tables so that `Base.metadata` is whole (Alembic, relationships)."""

from app.auth.models import ApiToken, LoginFailure, User, UserSession
from app.labeling.models import (
    Annotation,
    AnnotationItem,
    Assignment,
    Completion,
    Demonstration,
    Guideline,
    Task,
)
from app.prompts.models import Prompt, PromptProposal, PromptSet
from app.runs.models import Job, JobMetric, ModelVersion

__all__ = [
    "Annotation",
    "AnnotationItem",
    "ApiToken",
    "Assignment",
    "Completion",
    "Demonstration",
    "Guideline",
    "Job",
    "JobMetric",
    "LoginFailure",
    "ModelVersion",
    "Prompt",
    "PromptProposal",
    "PromptSet",
    "Task",
    "User",
    "UserSession",
]
