"""The researcher's dashboard: /runs (the queue), /runs/{id} (one run), /models (the registry),
and the same data as JSON under /api/v1/jobs and /api/v1/models. Researchers and admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.auth.deps import CurrentResearcher
from app.db import SessionDep
from app.errors import Id, Invalid, found
from app.runs import dashboard, plots
from app.runs import models_service as registry
from app.runs import service as jobs
from app.runs.models import Job, JobStatus, ModelKind
from app.runs.params import label_rows
from app.runs.schemas import JobDetailOut, JobListOut, JobOut, ModelOut
from app.web import ROOT, render

router = APIRouter(tags=["runs"])
api = APIRouter(tags=["runs"])

POLL_SECONDS = 2
LIST_LIMIT = 100
PANELS_DIR = ROOT / "templates" / "runs" / "panels"


def start_panels() -> list[str]:
    """Templates other domains drop into templates/runs/panels/ to offer "start a run" forms on
    /runs (train a reward model, start the next round), so this page needs no edit for each."""
    if not PANELS_DIR.is_dir():
        return []
    return [f"runs/panels/{p.name}" for p in sorted(PANELS_DIR.glob("*.html"))]


def _status_or_none(status: str | None) -> str | None:
    if not status:
        return None
    if status not in JobStatus.__members__:
        raise Invalid("status", f"unknown status '{status}' (known: {', '.join(JobStatus)})")
    return status


def _job_or_404(session: SessionDep, job_id: int) -> Job:
    return found(dashboard.get_job(session=session, job_id=job_id), f"Job {job_id} does not exist.")


# --- pages ----------------------------------------------------------------------------------


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    session: SessionDep,
    user: CurrentResearcher,
    kind: str | None = None,
    status: str | None = None,
) -> Response:
    rows = dashboard.list_runs(
        session=session, kind=kind or None, status=_status_or_none(status), limit=LIST_LIMIT
    )
    return render(
        request,
        "runs/list.html",
        {
            "limit": LIST_LIMIT,
            "rows": rows,
            "kind": kind or "",
            "status": status or "",
            "kinds": dashboard.kinds(session=session),
            "statuses": list(JobStatus),
            "counts": jobs.queue_counts(session=session),
            "polling": dashboard.is_any_active(rows),
            "poll_seconds": POLL_SECONDS,
            "human": dashboard.human,
            "panels": start_panels(),
        },
        block="fragment",
    )


@router.get("/runs/{job_id}", response_class=HTMLResponse)
def run_page(request: Request, session: SessionDep, user: CurrentResearcher, job_id: Id) -> Response:
    job = _job_or_404(session, job_id)
    series = jobs.metrics(session=session, job_id=job.id)
    charts = [plots.line_chart(group, title=title) for title, group in dashboard.group_metrics(series)]
    row = dashboard.row(session=session, job=job)
    return render(
        request,
        "runs/detail.html",
        {
            "row": row,
            "job": job,
            "charts": charts,
            "chain": dashboard.chain(session=session, job=job),
            "param_rows": label_rows(job.kind, job.params),
            "result_rows": label_rows(job.kind, dashboard.result_without_samples(job)),
            "trained_on": dashboard.training_data(session=session, job=job),
            "samples": dashboard.samples(job),
            "samples_from_demo": dashboard.samples_from_demo(job),
            "log_tail": dashboard.log_tail(job),
            "polling": row.is_active,
            "poll_seconds": POLL_SECONDS,
            "human": dashboard.human,
        },
        block="fragment",
    )


@router.post("/runs/{job_id}/cancel")
def cancel_page(request: Request, session: SessionDep, user: CurrentResearcher, job_id: Id) -> Response:
    job = _job_or_404(session, job_id)
    dashboard.cancel(session=session, job=job)
    return RedirectResponse(f"/runs/{job.id}", status_code=303)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, user: CurrentResearcher) -> Response:
    return _models_page(request, session)


def _models_page(
    request: Request, session: SessionDep, *, error: str | None = None, status_code: int = 200
) -> Response:
    models = registry.list_models(session=session)
    parents = registry.names(session=session, ids={m.parent_id for m in models if m.parent_id})
    return render(
        request,
        "runs/models.html",
        {
            "rewards": [m for m in models if m.kind == ModelKind.reward],
            "policies": [m for m in models if m.kind == ModelKind.policy],
            "parents": parents,
            "headline": registry.headline,
            "error": error,
            "pretty": dashboard.pretty,
        },
        status_code=status_code,
    )


@router.post("/models/{model_id}/activate")
def activate_page(request: Request, session: SessionDep, user: CurrentResearcher, model_id: Id) -> Response:
    try:
        registry.activate_reward(
            session=session, model=registry.get_model(session=session, model_id=model_id)
        )
    except registry.ModelError as exc:
        return _models_page(request, session, error=str(exc), status_code=422)
    return RedirectResponse("/models", status_code=303)


@router.post("/models/{model_id}/promote")
def promote_page(request: Request, session: SessionDep, user: CurrentResearcher, model_id: Id) -> Response:
    try:
        registry.promote_policy(session=session, model=registry.get_model(session=session, model_id=model_id))
    except registry.ModelError as exc:
        return _models_page(request, session, error=str(exc), status_code=422)
    return RedirectResponse("/models", status_code=303)


# --- JSON API -------------------------------------------------------------------------------


def job_out(row: dashboard.JobRow, model: type[JobOut] = JobOut, **extra: object) -> JobOut:
    job = row.job
    return model.model_validate(
        {
            **{f: getattr(job, f) for f in JobOut.model_fields if hasattr(job, f)},
            "created_by": row.who,
            "seconds_left": row.time_left.total_seconds() if row.time_left is not None else None,
            **extra,
        }
    )


@api.get("/jobs", response_model=JobListOut)
def jobs_api(
    session: SessionDep,
    user: CurrentResearcher,
    kind: str | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobListOut:
    """Newest first. Filter with ?kind=train_reward&status=running."""
    rows = dashboard.list_runs(session=session, kind=kind, status=_status_or_none(status), limit=limit)
    return JobListOut(jobs=[job_out(r) for r in rows], counts=jobs.queue_counts(session=session))


@api.get("/jobs/{job_id}", response_model=JobDetailOut)
def job_api(session: SessionDep, user: CurrentResearcher, job_id: Id) -> JobOut:
    """One job with its params, result, error, log tail and every metric series."""
    job = _job_or_404(session, job_id)
    return job_out(
        dashboard.row(session=session, job=job),
        JobDetailOut,
        result=job.result,
        error=job.error,
        log_tail=dashboard.log_tail(job),
        metrics=jobs.metrics(session=session, job_id=job.id),
        chain=[j.id for j in dashboard.chain(session=session, job=job)],
    )


@api.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_api(session: SessionDep, user: CurrentResearcher, job_id: Id) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next step (status stays
    `running` with cancel_requested true until then). A finished job is left as it is."""
    job = _job_or_404(session, job_id)
    dashboard.cancel(session=session, job=job)
    return job_out(dashboard.row(session=session, job=job))


@api.get("/models", response_model=list[ModelOut])
def models_api(session: SessionDep, user: CurrentResearcher, kind: str | None = None) -> list[ModelOut]:
    """Every model version, or only ?kind=policy / ?kind=reward; newest first."""
    models = registry.list_models(session=session, kind=kind or None)
    return [ModelOut.model_validate(m) for m in models]


@api.post("/models/{model_id}/activate", response_model=ModelOut)
def activate_api(session: SessionDep, user: CurrentResearcher, model_id: Id) -> ModelOut:
    """Make this model the active one of its kind (promote a policy, switch the reward model)."""
    model = registry.activate(session=session, model=registry.get_model(session=session, model_id=model_id))
    return ModelOut.model_validate(model)
