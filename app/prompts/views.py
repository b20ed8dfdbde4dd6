"""Prompt sets in the browser (/sets, admins) and in the JSON API (/api/v1/sets)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.auth.deps import CurrentAdmin
from app.db import SessionDep, undone_on_error
from app.errors import Id, Invalid, TooLarge, found
from app.prompts import sampling, service, upload
from app.prompts.models import DEFAULT_FLAGS, PromptSet, TrainOn
from app.prompts.parsing import Problem
from app.prompts.schemas import PromptSetOut
from app.runs import policies
from app.runs.params.sample import SAMPLE
from app.web import FormDep, is_htmx, read_upload, render

# What each train_on choice means, as the set page explains it.
TRAIN_ON_CHOICES = {
    TrainOn.not_rejected: "accepted or not yet reviewed (never rejected)",
    TrainOn.accepted: "accepted only",
    TrainOn.all: "all, rejected ones too",
}

router = APIRouter(tags=["prompts"])
api = APIRouter(tags=["prompts"])


def _set_or_404(session: Session, set_id: int) -> PromptSet:
    return found(service.get_set(session=session, set_id=set_id), f"No prompt set with id {set_id}.")


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _row(session: Session, ps: PromptSet) -> dict[str, Any]:
    versions = service.versions_by_id(
        session=session, ids={i for i in (ps.policy_version_id, ps.compare_version_id) if i}
    )
    return {
        "ps": ps,
        "prog": sampling.progress(session=session, prompt_set=ps),
        "policy": versions.get(ps.policy_version_id or 0),
        "compare": versions.get(ps.compare_version_id or 0),
        "is_demo": any(v.is_demo for v in versions.values()),
    }


# --- pages -----------------------------------------------------------------------------------


@router.get("/sets", response_class=HTMLResponse)
def sets_page(request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    rows = [_row(session, ps) for ps in service.list_sets(session=session)]
    return render(request, "prompts/list.html", {"rows": rows, "fmt_seconds": fmt_seconds})


def _new_form(
    request: Request,
    session: Session,
    *,
    problems: list[Problem] | None = None,
    truncated: bool = False,
    values: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    settings = request.app.state.settings
    active = policies.active_policy(session=session)
    return render(
        request,
        "prompts/new.html",
        {
            "policies": policies.list_policies(session=session),
            "active": active,
            "problems": problems or [],
            "truncated": truncated,
            "values": {
                "kind": "ranking",
                "k": 4,
                "overlap": 1,
                **SAMPLE.defaults,
                **{k: v for k, v in (values or {}).items() if v != ""},
            },
            "sample": SAMPLE,
            "max_upload_mb": settings.max_upload_mb,
            "max_prompt_tokens": settings.max_prompt_tokens,
            "k_range": (upload.K_MIN, upload.K_MAX),
            "default_flags": DEFAULT_FLAGS,
        },
        status_code=status_code,
    )


@router.get("/sets/new", response_class=HTMLResponse)
def new_set_page(request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    return _new_form(request, session)


def _number(problems: list[Problem], filename: str, fld: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw.strip())
    except ValueError:
        problems.append(
            Problem(filename, None, fld, f"not a {'whole ' if kind is int else ''}number: {raw!r}")
        )
        return None


Text = Annotated[str, Form()]


@dataclass
class SetUpload:
    """The upload form's fields, one list for the page and the API; the numbers are checked in _upload."""

    file: Annotated[UploadFile, File()]
    name: Text
    kind: Text = "ranking"
    k: Text = "4"
    overlap: Text = "1"
    fmt: Annotated[str, Form(alias="format")] = ""
    max_new_tokens: Text = ""  # the sampling fields (SAMPLE): empty means the default
    temperature: Text = ""
    top_p: Text = ""
    top_k: Text = ""
    policy_version_id: Text = ""
    compare_version_id: Text = ""
    flags: Text = ""

    def values(self) -> dict[str, str]:
        """What the page shows again after a refusal, keyed by the form's field names."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "file"}
        out["format"] = out.pop("fmt")
        return out


def _upload(request: Request, session: Session, admin_id: int, form: SetUpload) -> PromptSet:
    """Shared by the page and the API; raises upload.ImportRejected or TooLarge."""
    settings = request.app.state.settings
    filename = form.file.filename or "upload"
    data = read_upload(form.file, settings=settings)
    problems: list[Problem] = []
    numbers = {
        fld: _number(problems, filename, fld, raw, kind)
        for fld, raw, kind in (
            ("k", form.k, int),
            ("overlap", form.overlap, int),
            ("policy_version", form.policy_version_id or "0", int),
            ("compare_version", form.compare_version_id or "0", int),
        )
    }
    if problems:
        raise upload.ImportRejected(problems)
    return upload.import_prompt_set(
        session=session,
        settings=settings,
        name=form.name,
        filename=filename,
        data=data,
        fmt=form.fmt or None,
        kind=form.kind.strip() or "ranking",
        k=numbers["k"],
        overlap=numbers["overlap"],
        sampling={p.name: raw for p in SAMPLE.fields if (raw := getattr(form, p.name).strip())},
        policy_version_id=numbers["policy_version"] or None,
        compare_version_id=numbers["compare_version"] or None,
        flags=[line for line in form.flags.splitlines() if line.strip()] or None,
        created_by_id=admin_id,
    )


@router.post("/sets", response_class=HTMLResponse)
def upload_set(
    request: Request, session: SessionDep, admin: CurrentAdmin, form: Annotated[SetUpload, Depends()]
) -> Response:
    try:
        with undone_on_error(session):  # a default policy registered on the way goes too
            ps = _upload(request, session, admin.id, form)
    except (Invalid, TooLarge) as exc:
        problems = exc.problems if isinstance(exc, Invalid) else [Problem(None, None, None, exc.message)]
        truncated = isinstance(exc, Invalid) and exc.truncated
        return _new_form(
            request,
            session,
            problems=problems,
            truncated=truncated,
            values=form.values(),
            status_code=exc.status_code,
        )
    return RedirectResponse(f"/sets/{ps.id}", status_code=303)


@router.get("/sets/{set_id}", response_class=HTMLResponse)
def set_page(set_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    ps = _set_or_404(session, set_id)
    tasks = service.sample_tasks(session=session, prompt_set=ps, limit=10)
    version_ids = {c.model_version_id for t in tasks for c in t.completions if c.model_version_id}
    prompts = service.prompts_page(session=session, prompt_set=ps, limit=50)
    return render(
        request,
        "prompts/detail.html",
        {
            **_row(session, ps),
            "tasks": tasks,
            "prompt_text": {p.id: p.text for p in prompts},
            "prompts": prompts,
            "versions": service.versions_by_id(session=session, ids=version_ids),
            "fmt_seconds": fmt_seconds,
            "train_on_choices": TRAIN_ON_CHOICES,
        },
    )


@router.post("/sets/{set_id}/settings", response_class=HTMLResponse)
def set_settings(set_id: Id, session: SessionDep, admin: CurrentAdmin, form: FormDep) -> Response:
    """Which demonstrations count for training, and whether labelers may write prompts for it."""
    ps = _set_or_404(session, set_id)
    service.update_settings(
        session=session,
        prompt_set=ps,
        train_on=str(form.get("train_on", "")),
        allow_proposals=form.get("allow_proposals") == "1",
    )
    return RedirectResponse(f"/sets/{ps.id}", status_code=303)


@router.get("/sets/{set_id}/progress", response_class=HTMLResponse)
def set_progress(set_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    """The live progress block (htmx polls it while sampling runs)."""
    ps = _set_or_404(session, set_id)
    if not is_htmx(request):
        return RedirectResponse(f"/sets/{set_id}", status_code=303)
    return _progress(request, session, ps)


def _after_action(request: Request, session: Session, ps: PromptSet) -> Response:
    """After cancel or resume: the progress block for htmx, else back to the set's page."""
    if is_htmx(request):
        return _progress(request, session, ps)
    return RedirectResponse(f"/sets/{ps.id}", status_code=303)


def _progress(request: Request, session: Session, ps: PromptSet) -> Response:
    """The set page's progress block alone (htmx)."""
    return render(
        request, "prompts/detail.html", {**_row(session, ps), "fmt_seconds": fmt_seconds}, block="progress"
    )


@router.post("/sets/{set_id}/cancel", response_class=HTMLResponse)
def cancel_set(set_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    ps = _set_or_404(session, set_id)
    sampling.cancel_sampling(session=session, prompt_set=ps)
    return _after_action(request, session, ps)


@router.post("/sets/{set_id}/resume", response_class=HTMLResponse)
def resume_set(set_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    ps = _set_or_404(session, set_id)
    sampling.resume_sampling(session=session, prompt_set=ps, created_by_id=admin.id)
    return _after_action(request, session, ps)


# --- JSON API --------------------------------------------------------------------------------


def _out(session: Session, ps: PromptSet) -> PromptSetOut:
    """The set's own columns, with the figures its list row works out."""
    row = _row(session, ps)
    columns = {f: getattr(ps, f) for f in PromptSetOut.model_fields if hasattr(ps, f)}
    return PromptSetOut.model_validate(
        {**columns, "is_demo": row["is_demo"], "progress": row["prog"].as_dict()}
    )


@api.get("/sets", response_model=list[PromptSetOut])
def list_sets_api(session: SessionDep, admin: CurrentAdmin) -> list[PromptSetOut]:
    return [_out(session, ps) for ps in service.list_sets(session=session)]


@api.get("/sets/{set_id}", response_model=PromptSetOut)
def get_set_api(set_id: Id, session: SessionDep, admin: CurrentAdmin) -> PromptSetOut:
    return _out(session, _set_or_404(session, set_id))


@api.post(
    "/sets",
    response_model=PromptSetOut,
    status_code=201,
    responses={422: {"description": "Refused: every problem with file, line and field."}},
)
def upload_set_api(
    request: Request, session: SessionDep, admin: CurrentAdmin, form: Annotated[SetUpload, Depends()]
) -> PromptSetOut:
    """Upload a prompt file (multipart): all or nothing; queues the sampling job."""
    ps = _upload(request, session, admin.id, form)
    return _out(session, ps)


@api.post("/sets/{set_id}/cancel", response_model=PromptSetOut)
def cancel_set_api(set_id: Id, session: SessionDep, admin: CurrentAdmin) -> PromptSetOut:
    ps = _set_or_404(session, set_id)
    sampling.cancel_sampling(session=session, prompt_set=ps)
    return _out(session, ps)
