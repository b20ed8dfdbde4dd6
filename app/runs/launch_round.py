"""The "Train policy (PPO)" form and the "Start next round" button. Researchers and admins.

GET/POST /runs/new/ppo → a `train_ppo` job, then its run page.
GET /runs/new/round shows what a round does; POST /runs/round queues the chain [train_sft →]
train_reward → train_ppo → promote → sample (app/runs/round_service.py) and opens its first step.
Both forms are made from the parameter definitions (app/runs/params). No torch here: the worker trains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.deps import CurrentResearcher
from app.config import Settings
from app.db import SessionDep
from app.errors import TooLarge
from app.prompts.models import PromptSet, SetStatus
from app.runs import models_service as registry
from app.runs.launch import start
from app.runs.models import ModelKind
from app.runs.params import ROUND, TRAIN_PPO, JobSpec, ParamsError, form_values, from_form
from app.runs.ptx import ptx_texts
from app.runs.round_service import RoundError, enqueue_round
from app.web import FormDep, read_upload, render

router = APIRouter(tags=["runs"])


def _context(session: Session, spec: JobSpec, values: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    return {
        "spec": spec,
        "sets": list(
            session.scalars(
                select(PromptSet.name).where(PromptSet.status != SetStatus.archived).order_by(PromptSet.name)
            )
        ),
        "policy": registry.active(session=session, kind=ModelKind.policy),
        "reward": registry.active(session=session, kind=ModelKind.reward),
        "values": form_values(spec, values),
        "errors": errors,
    }


@router.get("/runs/new/ppo", response_class=HTMLResponse)
def new_ppo_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    return render(request, "runs/new_ppo.html", _context(session, TRAIN_PPO, {}, []))


def _read_ptx(upload: Any, settings: Settings, errors: list[str]) -> bytes | None:
    """An uploaded PPO-ptx corpus, JSON Lines of {"text": ...}, checked whole (None: no file)."""
    if upload is None or isinstance(upload, str) or not upload.filename:
        return None
    name = upload.filename
    try:
        data = read_upload(upload, settings=settings)
    except TooLarge as exc:
        errors.append(f"pretraining file {exc.message}")
        return None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        errors.append(f"pretraining file {name}: not UTF-8 text")
        return None
    try:
        ptx_texts(lines, f"pretraining file {name}")
    except ValueError as exc:
        errors.append(str(exc))
        return None
    return data


@router.post("/runs/new/ppo")
def new_ppo(request: Request, session: SessionDep, user: CurrentResearcher, form: FormDep) -> Response:
    params, errors = from_form(TRAIN_PPO, form)
    settings = request.app.state.settings
    ptx = _read_ptx(form.get("ptx_file"), settings, errors)
    if ptx is not None:  # stored by content (the worker reads it from the shared artifacts folder)
        path = Path(settings.artifacts_dir).resolve() / "ptx" / f"{hashlib.sha256(ptx).hexdigest()}.jsonl"
        params["ptx_file"] = str(path)
    try:
        job = start(request, session, user, "train_ppo", params, errors)
    except ParamsError as exc:
        params.pop("ptx_file", None)
        return render(
            request, "runs/new_ppo.html", _context(session, TRAIN_PPO, params, exc.errors), status_code=422
        )
    if ptx is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ptx)
    return RedirectResponse(f"/runs/{job.id}", status_code=303)


@router.get("/runs/new/round", response_class=HTMLResponse)
def round_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    return render(request, "runs/new_round.html", _context(session, ROUND, {}, []))


@router.post("/runs/round")
def start_round(request: Request, session: SessionDep, user: CurrentResearcher, form: FormDep) -> Response:
    """Start next round: one chain of jobs; the page of its first step links the rest."""
    params, errors = from_form(ROUND, form)
    if not errors:
        try:
            rnd = enqueue_round(
                session=session,
                sets=params.get("sets") or None,
                mix=bool(params.get("mix")),
                created_by_id=user.id,
                ppo_params={k: v for k, v in params.items() if k in TRAIN_PPO and k != "sets"},
                max_attempts=request.app.state.settings.job_max_attempts,
                sft=bool(params.get("sft")),
            )
        except RoundError as exc:
            errors.append(str(exc))
    if errors:  # enqueue_round checks everything before it writes: nothing to undo
        return render(
            request, "runs/new_round.html", _context(session, ROUND, params, errors), status_code=422
        )
    return RedirectResponse(f"/runs/{rnd.jobs[0].id}", status_code=303)
