"""The labeling domain's service, as other modules import it (`from app.labeling import service as
labeling`): taking a task (claim.py), what is shown of it (task_view.py), finishing an assignment
(finish.py, for any kind of task) and a ranking task's outcomes (submit.py)."""

from __future__ import annotations

from app.labeling.claim import get_assignment, next_assignment
from app.labeling.finish import SubmissionInvalid, SubmissionRefused
from app.labeling.submit import SKIP_REASONS, inconsistencies, skip, skip_by_id, submit, submit_by_id
from app.labeling.task_view import TaskView, letter, queue_position, task_view

__all__ = [
    "SKIP_REASONS",
    "SubmissionInvalid",
    "SubmissionRefused",
    "TaskView",
    "get_assignment",
    "inconsistencies",
    "letter",
    "next_assignment",
    "queue_position",
    "skip",
    "skip_by_id",
    "submit",
    "submit_by_id",
    "task_view",
]
