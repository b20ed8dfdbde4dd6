"""Training groups from the database: per task, its completions and every labeler's dense ranks.

Skipped annotations are no data. Filters mirror the export filters (prompt sets, labelers, time
range, tasks with at least N labels); the split by prompt happens in the training loop. No torch.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import utcnow
from app.labeling.models import Annotation, Task
from app.prompts.models import Prompt, PromptSet
from trainer.reward.model import Group

SCHEMA = "ranklab.reward_groups/1"


@dataclass
class DataFilters:
    sets: list[str] = field(default_factory=list)
    """Prompt set names; empty: every set."""
    min_labels: int = 1
    """Only tasks with at least this many (unskipped) rankings."""
    labelers: list[str] = field(default_factory=list)
    """Only these labelers' rankings (usernames); empty: everyone's."""
    since: datetime | None = None
    """Only rankings made at or after this time."""
    until: datetime | None = None
    """Only rankings made before this time."""

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DataFilters:
        def when(v: Any) -> datetime | None:
            return datetime.fromisoformat(v) if isinstance(v, str) and v else v or None

        sets = params.get("sets") or []
        labelers = params.get("labelers") or []
        return cls(
            sets=[sets] if isinstance(sets, str) else list(sets),
            min_labels=max(1, int(params.get("min_labels") or 1)),
            labelers=[labelers] if isinstance(labelers, str) else list(labelers),
            since=when(params.get("since")),
            until=when(params.get("until")),
        )


def load_groups(*, session: Session, filters: DataFilters) -> tuple[list[Group], dict[str, Any]]:
    """The groups the filters select, in task order, and a manifest a run can cite."""
    known = set(session.scalars(select(PromptSet.name)))
    missing = [s for s in filters.sets if s not in known]
    if missing:
        raise ValueError(
            f"no prompt set named {', '.join(repr(m) for m in missing)} "
            f"(known: {', '.join(sorted(known)) or 'none'})"
        )
    query = (
        select(Annotation, Task, Prompt)
        .join(Task, Annotation.task_id == Task.id)
        .join(Prompt, Task.prompt_id == Prompt.id)
        .where(Annotation.skip_reason.is_(None))
        .order_by(Task.id, Annotation.id)
    )
    if filters.sets:
        query = query.join(PromptSet, Task.prompt_set_id == PromptSet.id).where(
            PromptSet.name.in_(filters.sets)
        )
    if filters.labelers:
        query = query.join(User, Annotation.user_id == User.id).where(User.username.in_(filters.labelers))
    if filters.since is not None:
        query = query.where(Annotation.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Annotation.created_at < filters.until)

    by_task: dict[int, list[Annotation]] = defaultdict(list)
    tasks: dict[int, tuple[Task, Prompt]] = {}
    for ann, task, prompt in session.execute(query):
        by_task[task.id].append(ann)
        tasks[task.id] = (task, prompt)

    groups: list[Group] = []
    digest = hashlib.sha256()
    dropped = 0
    for task_id, anns in by_task.items():
        task, prompt = tasks[task_id]
        comps = list(task.completions)
        rankings = []
        for ann in anns:
            ranks = {item.completion_id: item.rank for item in ann.items}
            if any(c.id not in ranks for c in comps):
                dropped += 1  # an annotation that does not rank every completion is unusable
                continue
            rankings.append(tuple(ranks[c.id] for c in comps))
            digest.update(f"{ann.id}:{rankings[-1]};".encode())
        if len(rankings) < filters.min_labels or len(comps) < 2:
            continue
        groups.append(
            Group(
                prompt=prompt.text,
                completions=tuple(c.text for c in comps),
                rankings=tuple(rankings),
                key=prompt.text_hash,
                policies=tuple(c.model_version_id for c in comps),
                task_id=task.id,
            )
        )
    manifest = {
        "schema": SCHEMA,
        "created_at": utcnow().isoformat(),
        "filters": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(filters).items()},
        "tasks": len(groups),
        "rankings": sum(len(g.rankings) for g in groups),
        "comparisons": sum(g.n_pairs() for g in groups),
        "completions": sum(g.k for g in groups),
        "incomplete_annotations_dropped": dropped,
        "sha256": digest.hexdigest(),
    }
    return groups, manifest


def group_from_row(row: dict[str, Any]) -> Group:
    """A groups-file row (ranklab's `groups` export): {"prompt", "completions": [text | {"text"}],
    "rankings": [[rank, ...] | {"ranks": [...]}, ...]} or one labeler's "ranks"."""
    comps = tuple(c["text"] if isinstance(c, dict) else str(c) for c in row["completions"])
    if "rankings" in row:
        rankings = row["rankings"]
    elif "ranks" in row:
        rankings = [row["ranks"]]
    else:
        raise KeyError("'rankings' (a list of rank lists) is missing")
    raw = [x["ranks"] if isinstance(x, dict) else x for x in rankings]
    # A labeler who left a completion unranked gives no usable ranking of this task.
    rankings = tuple(tuple(int(r) for r in ranks) for ranks in raw if None not in ranks)
    for r in rankings:
        if len(r) != len(comps):
            raise ValueError(f"a ranking has {len(r)} ranks for {len(comps)} completions")
    return Group(
        prompt=str(row["prompt"]),
        completions=comps,
        rankings=rankings,
        key=str(row.get("prompt_id") or row["prompt"]),
    )
