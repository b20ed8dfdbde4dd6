"""Starting training runs: the "Train reward model" and "Train policy on demonstrations (SFT)" forms
(GET/POST /runs/new/reward, /runs/new/sft) and the JSON API (POST /api/v1/jobs/train_reward,
train_ppo, train_sft). Researchers and admins.

The form's fields, the API's schema and both validations come from the job's parameter definition
(app/runs/params); the database checks and the enqueue from app/runs/launch_service.py. No torch
here: the worker trains.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.deps import CurrentResearcher
from app.db import SessionDep
from app.prompts.models import PromptSet
from app.runs import dashboard, launch_service, models_service
from app.runs.models import ModelKind
from app.runs.params import TRAIN_PPO, TRAIN_REWARD, TRAIN_SFT, JobSpec, ParamsError, form_values, from_form
from app.runs.schemas import JobOut
from app.runs.views import job_out
from app.web import FormDep, render

router = APIRouter(tags=["runs"])


def start(
    request: Request,
    session: Session,
    user: Any,
    kind: str,
    params: dict[str, Any],
    errors: list[str] | None = None,
) -> Any:
    """Queue a `kind` job for `user` (launch_service.start: checks, then enqueue), with the
    configured number of attempts; the forms pass the errors their own checks found."""
    return launch_service.start(
        session=session,
        kind=kind,
        params=params,
        created_by_id=user.id,
        max_attempts=request.app.state.settings.job_max_attempts,
        errors=errors,
    )


def _context(
    session: Session, values: dict[str, Any], errors: list[str], spec: JobSpec = TRAIN_REWARD
) -> dict[str, Any]:
    return {
        "spec": spec,
        "sets": list(session.scalars(select(PromptSet.name).order_by(PromptSet.name))),
        "policy": models_service.active(session=session, kind=ModelKind.policy),
        "reward": models_service.active(session=session, kind=ModelKind.reward),
        "values": form_values(spec, values),
        "errors": errors,
    }


def _start_form(
    request: Request, session: Session, user: Any, form: Any, spec: JobSpec, page: str
) -> Response:
    """A form's params → a queued job and its run page, or the form again with every error."""
    params, errors = from_form(spec, form)
    try:
        job = start(request, session, user, spec.kind, params, errors)
    except ParamsError as exc:
        return render(request, page, _context(session, params, exc.errors, spec), status_code=422)
    return RedirectResponse(f"/runs/{job.id}", status_code=303)


@router.get("/runs/new/reward", response_class=HTMLResponse)
def new_reward_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    return render(request, "runs/new_reward.html", _context(session, {}, []))


@router.post("/runs/new/reward")
def new_reward(request: Request, session: SessionDep, user: CurrentResearcher, form: FormDep) -> Response:
    return _start_form(request, session, user, form, TRAIN_REWARD, "runs/new_reward.html")


@router.get("/runs/new/sft", response_class=HTMLResponse)
def new_sft_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    return render(request, "runs/new_sft.html", _context(session, {}, [], TRAIN_SFT))


@router.post("/runs/new/sft")
def new_sft(request: Request, session: SessionDep, user: CurrentResearcher, form: FormDep) -> Response:
    return _start_form(request, session, user, form, TRAIN_SFT, "runs/new_sft.html")


# --- JSON API -------------------------------------------------------------------------------


def _start_api(request: Request, session: Session, user: Any, spec: JobSpec, body: BaseModel) -> JobOut:
    try:
        job = start(
            request, session, user, spec.kind, spec.validate(body.model_dump(mode="json", exclude_unset=True))
        )
    except ParamsError as exc:
        # The app's one 422 shape (app/main.py), as for a body that fails the schema itself.
        detail = [{"field": e.partition(": ")[0], "message": e.partition(": ")[2] or e} for e in exc.errors]
        raise HTTPException(422, detail) from exc
    return job_out(dashboard.row(session=session, job=job))


def _api_route(spec: JobSpec, doc: str) -> None:
    """POST /api/v1/jobs/KIND: queue a `spec.kind` job. The body's model is made from the job's
    definition, so the OpenAPI page lists every field with its range, default and help."""

    def queue(request: Request, session: SessionDep, user: CurrentResearcher, body: BaseModel) -> JobOut:
        return _start_api(request, session, user, spec, body)

    queue.__annotations__["body"] = spec.model  # what FastAPI reads the body as
    queue.__name__, queue.__doc__ = f"{spec.kind}_api", doc
    router.post(f"/api/v1/jobs/{spec.kind}", response_model=JobOut, status_code=201)(queue)


_api_route(
    TRAIN_REWARD,
    """Queue a reward-model run. Every field is optional (its default applies); the job's params
    keep only the fields sent. The run's page is /runs/{id}; follow it at /api/v1/jobs/{id}.""",
)
_api_route(
    TRAIN_PPO,
    """Queue a PPO run from the active policy against the active reward model (or
    `reward_version_id`). A pretraining file for PPO-ptx can be given only on the form or the
    CLI; here ptx_coef > 0 trains on the chosen completions of the labeled data.""",
)
_api_route(
    TRAIN_SFT,
    """Queue an SFT run: the demonstrations that count (`GET /api/v1/exports/sft` with the same
    sets) fine-tune the active policy, or `base_model`, into a new policy version, inactive
    until promoted.""",
)
