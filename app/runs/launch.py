"""The "Train reward model" form: export filters, base model and the main hyperparameters → a
`train_reward` job, then its run page. Researchers and admins. No torch here: the worker trains."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.deps import CurrentResearcher
from app.db import SessionDep
from app.prompts.models import PromptSet
from app.runs import models_service
from app.runs import service as jobs
from app.runs.models import ModelKind
from app.web import render

router = APIRouter(tags=["runs"])

# Form defaults: InstructGPT's recipe at a size a single machine trains in minutes.
DEFAULTS: dict[str, Any] = {
    "lr": 1e-5,
    "epochs": 1,
    "batch_size": 8,
    "max_length": 512,
    "min_labels": 1,
    "base_model": "",
    "sets": [],
}


def _context(session: Session, values: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    policy = models_service.active(session=session, kind=ModelKind.policy)
    return {
        "sets": list(session.scalars(select(PromptSet.name).order_by(PromptSet.name))),
        "policy": policy,
        "values": values,
        "errors": errors,
    }


@router.get("/runs/new/reward", response_class=HTMLResponse)
def new_reward_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    return render(request, "runs/new_reward.html", _context(session, dict(DEFAULTS), []))


@router.post("/runs/new/reward")
def new_reward(
    request: Request,
    session: SessionDep,
    user: CurrentResearcher,
    sets: Annotated[list[str] | None, Form()] = None,
    min_labels: Annotated[str, Form()] = "1",
    base_model: Annotated[str, Form()] = "",
    lr: Annotated[str, Form()] = "1e-5",
    epochs: Annotated[str, Form()] = "1",
    batch_size: Annotated[str, Form()] = "8",
    max_length: Annotated[str, Form()] = "512",
) -> Response:
    values: dict[str, Any] = {
        "sets": sets or [],
        "base_model": base_model.strip(),
        "lr": lr,
        "epochs": epochs,
        "batch_size": batch_size,
        "max_length": max_length,
        "min_labels": min_labels,
    }
    errors: list[str] = []
    params: dict[str, Any] = {"sets": values["sets"]}
    for name, kind, low, high in (
        ("lr", float, 1e-9, 1.0),
        ("epochs", int, 1, 100),
        ("batch_size", int, 1, 4096),
        ("max_length", int, 8, 65536),
        ("min_labels", int, 1, 1000),
    ):
        try:
            number = kind(str(values[name]).strip())
            if not low <= number <= high:
                raise ValueError
            params[name] = number
        except ValueError:
            errors.append(f"{name.replace('_', ' ')}: a number from {low} to {high}, not {values[name]!r}")
    known = set(session.scalars(select(PromptSet.name)))
    errors += [f"sets: no prompt set named {s!r}" for s in values["sets"] if s not in known]
    ctx = _context(session, values, errors)
    if not values["base_model"] and ctx["policy"] is None:
        errors.append("base model: no policy is active, so name a backbone (hub id or folder)")
    if errors:
        return render(request, "runs/new_reward.html", ctx, status_code=422)
    if values["base_model"]:
        params["base_model"] = values["base_model"]
    job = jobs.enqueue(
        session=session,
        kind="train_reward",
        params=params,
        created_by_id=user.id,
        max_attempts=request.app.state.settings.job_max_attempts,
    )
    return RedirectResponse(f"/runs/{job.id}", status_code=303)
