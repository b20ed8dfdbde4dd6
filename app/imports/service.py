"""`preferences import`: external preference data in, as a prompt set with tasks and annotations.

Reads Anthropic HH-RLHF (`chosen`/`rejected` dialogues), TRL (`prompt`/`chosen`/`rejected`,
standard or conversational) and ranklab's own `rankings` export, as JSON Lines (optionally
gzipped) or Parquet. Prompts are stored as conversations (app/chat.py): an HH dialogue's prompt
is every turn before the last Assistant turn, a TRL conversational prompt its message list,
a rankings row its `messages`. Every row is checked before anything is written: one bad row
refuses the whole file, each bad row named with its line and field; with `skip_invalid` the good
rows go in and the bad ones are listed. Rows are written with bulk INSERT ... RETURNING, not one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db import utcnow
from app.imports.parsing import (  # noqa: F401  (re-exported: the views, the CLI, tests)
    KINDS,
    MAX_LISTED,
    ImportRefused,
    RowError,
    Unit,
    detect_kind,
    parse,
    read_rows,
    refuse_unless_usable,
)
from app.imports.upload import Upload, accept
from app.imports.writing import (
    group_tasks,
    new_set,
    policy_versions,
    system_users,
    write_annotations,
    write_completions,
    write_tasks,
)
from app.prompts.models import PromptSet


@dataclass
class ImportResult:
    prompt_set: PromptSet
    kind: str
    rows: int
    imported: int
    tasks: int
    skipped: list[RowError]


def import_preferences(session: Session, upload: Upload) -> ImportResult:
    """Validate everything, then write it all (or nothing: the caller's transaction).

    Phases: the upload accepted (name, rows) → group rows into tasks → the set, its policy
    versions and labelers → prompts and tasks → completions → assignments, annotations and their items.
    """
    got = accept(session, upload, parse)
    tasks, comps_of = group_tasks(got.rows)
    ps = new_set(
        session,
        name=got.name,
        filename=got.filename,
        created_by_id=upload.created_by_id,
        tasks=tasks,
        comps_of=comps_of,
        report=got.report(),
    )
    versions = policy_versions(session, got.name, comps_of)
    users = system_users(session, got.name, got.rows)
    now = utcnow()
    keys = list(tasks)
    task_ids = write_tasks(session, ps, tasks, keys, now)
    comp_id = write_completions(session, keys, task_ids, comps_of, versions, now)
    write_annotations(session, tasks, keys, task_ids, comp_id, users, now)
    session.flush()
    return ImportResult(
        prompt_set=ps,
        kind=got.kind,
        rows=got.total,
        imported=len(got.rows),
        tasks=len(keys),
        skipped=got.skipped,
    )
