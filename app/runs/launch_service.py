"""Starting a training run from checked params: what the form, the JSON API and the CLI share
beyond the parameter definitions (app/runs/params): the checks that need the database (do the
named sets exist, is there a policy to start from, a reward model to score with) and the enqueue.
HTTP-free; raises ParamsError naming the field, and writes nothing then."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import MAX_ROW_ID
from app.prompts.models import PromptSet
from app.runs import models_service as registry
from app.runs import service as jobs
from app.runs.models import Job, ModelKind, ModelVersion
from app.runs.params import ParamsError


def unknown_sets(*, session: Session, names: list[str]) -> list[str]:
    """One "sets: ..." error per name that is no prompt set."""
    known = set(session.scalars(select(PromptSet.name).where(PromptSet.name.in_(names)))) if names else set()
    return [f"sets: no prompt set named {s!r}" for s in names if s not in known]


def reward_errors(*, session: Session, params: dict[str, Any]) -> list[str]:
    errors = unknown_sets(session=session, names=params.get("sets") or [])
    if not params.get("base_model") and registry.active(session=session, kind=ModelKind.policy) is None:
        errors.append("base_model: no policy is active, so name a backbone (hub id or folder)")
    return errors


def ppo_errors(*, session: Session, params: dict[str, Any]) -> list[str]:
    errors = unknown_sets(session=session, names=params.get("sets") or [])
    version = params.get("reward_version_id")
    if version is not None:
        model = session.get(ModelVersion, version)
        if model is None or model.kind != ModelKind.reward:
            errors.append(f"reward_version_id: no reward model version {version}")
    elif registry.active(session=session, kind=ModelKind.reward) is None:
        errors.append("reward_version_id: no reward model is active; train one first (Train reward model)")
    return errors


def sft_errors(*, session: Session, params: dict[str, Any]) -> list[str]:
    errors = unknown_sets(session=session, names=params.get("sets") or [])
    base = str(params.get("base_model") or "").strip()
    if base.isdigit():
        model = session.get(ModelVersion, int(base)) if int(base) <= MAX_ROW_ID else None
        if model is None or model.kind != ModelKind.policy:
            errors.append(f"base_model: no policy version {base}")
    return errors


CHECKS = {"train_reward": reward_errors, "train_ppo": ppo_errors, "train_sft": sft_errors}


def start(
    *,
    session: Session,
    kind: str,
    params: dict[str, Any],
    created_by_id: int | None,
    max_attempts: int,
    errors: list[str] | None = None,
) -> Job:
    """Queue a `kind` job with `params` (already checked against its definition). `errors` found
    earlier (e.g. in an uploaded file) are reported with the database checks, all at once."""
    found = [*(errors or []), *CHECKS[kind](session=session, params=params)]
    if found:
        raise ParamsError(found)
    return jobs.enqueue(
        session=session, kind=kind, params=params, created_by_id=created_by_id, max_attempts=max_attempts
    )
