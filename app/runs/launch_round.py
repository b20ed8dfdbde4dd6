"""The "Train policy (PPO)" form and the "Start next round" button. Researchers and admins.

GET/POST /runs/new/ppo → a `train_ppo` job, then its run page.
GET /runs/new/round shows what a round does; POST /runs/round queues the chain
train_reward → train_ppo → promote → sample (app/runs/round_service.py) and opens its first step.
No torch here: the worker trains.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.deps import CurrentResearcher
from app.config import Settings
from app.db import SessionDep
from app.errors import TooLarge
from app.prompts.models import PromptSet, SetStatus
from app.runs import models_service as registry
from app.runs import service as jobs
from app.runs.models import ModelKind
from app.runs.round_service import RoundError, enqueue_round
from app.web import FormDep, read_upload, render

router = APIRouter(tags=["runs"])

# (field, type, low, high, form default). Defaults: the paper's β, clip and GAE, at a size one
# machine runs in minutes (the paper: batch 512, minibatch 64, 256k episodes).
KNOBS: list[tuple[str, type, float, float, Any]] = [
    ("iterations", int, 1, 1_000_000, 100),
    ("batch_size", int, 1, 65_536, 64),
    ("mini_batch_size", int, 1, 65_536, 16),
    ("ppo_epochs", int, 1, 100, 1),
    ("learning_rate", float, 1e-10, 1.0, 1e-5),
    ("beta", float, 0.0, 100.0, 0.02),
    ("ptx_coef", float, 0.0, 1000.0, 0.0),
    ("max_new_tokens", int, 1, 8192, 64),
    ("seed", int, 0, 2**31 - 1, 0),
]
OPTIONAL_KNOBS: list[tuple[str, type, float, float]] = [("kl_target", float, 1e-6, 1000.0)]


def _parse(values: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, kind, low, high, *_ in KNOBS + [(*k, None) for k in OPTIONAL_KNOBS]:
        raw = str(values.get(name, "")).strip()
        if raw == "" and any(name == k[0] for k in OPTIONAL_KNOBS):
            continue
        try:
            number = kind(raw)
            if not low <= number <= high:
                raise ValueError
            params[name] = number
        except ValueError:
            errors.append(f"{name.replace('_', ' ')}: a number from {low:g} to {high:g}, not {raw!r}")
    if (
        "mini_batch_size" in params
        and "batch_size" in params
        and params["mini_batch_size"] > params["batch_size"]
    ):
        errors.append("mini batch size: at most the batch size")
    return params


def _context(session: Session, values: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    return {
        "sets": list(
            session.scalars(
                select(PromptSet.name).where(PromptSet.status != SetStatus.archived).order_by(PromptSet.name)
            )
        ),
        "policy": registry.active(session=session, kind=ModelKind.policy),
        "reward": registry.active(session=session, kind=ModelKind.reward),
        "values": values,
        "errors": errors,
        "knobs": [k[0] for k in KNOBS],
    }


@router.get("/runs/new/ppo", response_class=HTMLResponse)
def new_ppo_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    values = {name: default for name, _, _, _, default in KNOBS} | {"sets": [], "kl_target": ""}
    return render(request, "runs/new_ppo.html", _context(session, values, []))


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
    texts = 0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"pretraining file {name}, line {n}: not JSON ({exc.msg})")
            return None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            errors.append(
                f"pretraining file {name}, line {n}: each line must be an object with a string field 'text'"
            )
            return None
        texts += 1
    if not texts:
        errors.append(f"pretraining file {name}: no texts")
        return None
    return data


@router.post("/runs/new/ppo")
def new_ppo(request: Request, session: SessionDep, user: CurrentResearcher, form: FormDep) -> Response:
    """A plain `def` (the thread pool): it queries, reads the upload and writes it to disk."""
    values: dict[str, Any] = {name: form.get(name, "") for name, *_ in KNOBS}
    values["kl_target"] = form.get("kl_target", "")
    values["sets"] = [str(s) for s in form.getlist("sets")]
    errors: list[str] = []
    params = _parse(values, errors)
    known = set(session.scalars(select(PromptSet.name)))
    errors += [f"sets: no prompt set named {s!r}" for s in values["sets"] if s not in known]
    settings = request.app.state.settings
    ptx = _read_ptx(form.get("ptx_file"), settings, errors)
    ctx = _context(session, values, errors)
    if ctx["reward"] is None:
        errors.append("reward model: none is active; train one first (Train reward model)")
    if errors:
        return render(request, "runs/new_ppo.html", ctx, status_code=422)
    params["sets"] = values["sets"]
    if ptx is not None:  # stored by content (the worker reads it from the shared artifacts folder)
        path = Path(settings.artifacts_dir).resolve() / "ptx" / f"{hashlib.sha256(ptx).hexdigest()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ptx)
        params["ptx_file"] = str(path)
    job = jobs.enqueue(
        session=session,
        kind="train_ppo",
        params=params,
        created_by_id=user.id,
        max_attempts=request.app.state.settings.job_max_attempts,
    )
    return RedirectResponse(f"/runs/{job.id}", status_code=303)


@router.get("/runs/new/round", response_class=HTMLResponse)
def round_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    values = {name: default for name, _, _, _, default in KNOBS} | {"sets": [], "mix": True, "kl_target": ""}
    return render(request, "runs/new_round.html", _context(session, values, []))


@router.post("/runs/round")
def start_round(
    request: Request,
    session: SessionDep,
    user: CurrentResearcher,
    sets: Annotated[list[str] | None, Form()] = None,
    mix: Annotated[str, Form()] = "",
    iterations: Annotated[str, Form()] = str(KNOBS[0][4]),
    beta: Annotated[str, Form()] = "0.02",
    ptx_coef: Annotated[str, Form()] = "0.0",
) -> Response:
    """Start next round: one chain of jobs; the page of its first step links the rest."""
    values: dict[str, Any] = {name: default for name, _, _, _, default in KNOBS}
    values |= {
        "sets": sets or [],
        "mix": bool(mix),
        "iterations": iterations,
        "beta": beta,
        "ptx_coef": ptx_coef,
        "kl_target": "",
    }
    errors: list[str] = []
    ppo_params = {k: v for k, v in _parse(values, errors).items() if k in ("iterations", "beta", "ptx_coef")}
    if not errors:
        try:
            rnd = enqueue_round(
                session=session,
                sets=values["sets"] or None,
                mix=values["mix"],
                created_by_id=user.id,
                ppo_params=ppo_params,
                max_attempts=request.app.state.settings.job_max_attempts,
            )
        except RoundError as exc:
            errors.append(str(exc))
    if errors:  # enqueue_round checks everything before it writes: nothing to undo
        return render(request, "runs/new_round.html", _context(session, values, errors), status_code=422)
    return RedirectResponse(f"/runs/{rnd.reward_job.id}", status_code=303)
