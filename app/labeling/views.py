"""The labeling page (/label), history, guidelines, and the JSON API for vendors and scripts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.auth.deps import CurrentAdmin, CurrentLabeler, CurrentUser
from app.auth.models import User
from app.db import SessionDep, in_one_hop, utcnow
from app.errors import ErrorOut, Id, Invalid, NotFound, ProblemsOut
from app.labeling import demonstrations, guidelines, history
from app.labeling import service as labeling
from app.labeling.models import Annotation, Assignment
from app.labeling.schemas import (
    AnnotationIn,
    AnnotationOut,
    CompletionOut,
    DemonstrationIn,
    DemonstrationOut,
    DraftOut,
    MessageOut,
    TaskOut,
)
from app.prompts.models import SetKind
from app.web import FormDep, render

router = APIRouter(tags=["labeling"])
api = APIRouter(tags=["labeling"])


def _lease_minutes(request: Request) -> float:
    return float(request.app.state.settings.lease_minutes)


def _page(
    request: Request,
    session: SessionDep,
    user: User,
    assignment: Assignment,
    *,
    error: str | None = None,
    values: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    view = labeling.task_view(session=session, assignment=assignment, with_position=True)
    x, y = view.position or (1, 1)
    body = view.guideline_body
    elapsed_ms = max(0, int((utcnow() - assignment.created_at).total_seconds() * 1000))
    demonstration = view.kind == SetKind.demonstration
    # What was entered, shown again when refused; a form of the other kind (a ranking posted to a
    # demonstration task, or the reverse) has nothing that fits this page, which starts empty.
    empty = (
        {"reply": "", "notes": "", "draft_completion_id": ""}
        if demonstration
        else {"rank": {}, "rating": {}, "flags": {}, "notes": ""}
    )
    values = values if values is not None and ("reply" in values) == demonstration else empty
    return render(
        request,
        "labeling/demonstration.html" if demonstration else "labeling/label.html",
        {
            "view": view,
            "x": x,
            "y": y,
            "guideline_version": view.guideline_version,
            "guideline_html": guidelines.render_markdown(body) if body is not None else None,
            "skip_reasons": labeling.SKIP_REASONS,
            "error": error,
            "elapsed_ms": elapsed_ms,
            "values": values,
            "draft": view.completions[0] if demonstration and view.completions else None,
        },
        status_code=status_code,
    )


@router.get("/label", response_class=HTMLResponse)
def label_page(request: Request, session: SessionDep, user: CurrentLabeler) -> Response:
    assignment = labeling.next_assignment(session=session, user=user, lease_minutes=_lease_minutes(request))
    if assignment is None:
        return render(request, "labeling/empty.html", {})
    return _page(request, session, user, assignment)


def _form_values(form: FormData, completion_ids: list[int]) -> dict[str, Any]:
    return {
        "rank": {cid: str(form.get(f"rank-{cid}", "")) for cid in completion_ids},
        "rating": {cid: str(form.get(f"rating-{cid}", "")) for cid in completion_ids},
        "flags": {cid: [str(f) for f in form.getlist(f"flags-{cid}")] for cid in completion_ids},
        "notes": str(form.get("notes", "")),
        "item_notes": {cid: str(form.get(f"note-{cid}", "")).strip() for cid in completion_ids},
    }


def _form_ids(form: FormData) -> list[int]:
    """The completion ids the form names (rank-31, rating-31, flags-31, note-31); the service
    refuses any that are not the task's."""
    ids = set()
    for key in form:
        prefix, _, tail = key.partition("-")
        if prefix in ("rank", "rating", "flags", "note") and tail.isdigit() and len(tail) <= 10:
            ids.add(int(tail))
    return sorted(ids)


def _int_or_keep(value: str) -> Any:
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return value  # the service names the field


def _ms(raw: Any) -> int | None:
    # The length cap: int() refuses strings of over 4,300 digits (a 500), and no task lasts 10**15 ms.
    raw = str(raw or "").strip()
    return int(raw) if raw.isdigit() and len(raw) <= 15 else None


@router.post("/label/{assignment_id}", response_class=HTMLResponse)
def label_submit(
    request: Request, session: SessionDep, user: CurrentLabeler, form: FormDep, assignment_id: Id
) -> Response:
    values = _form_values(form, _form_ids(form))
    ranks = {str(cid): _int_or_keep(v) for cid, v in values["rank"].items() if v.strip()}
    ratings = {str(cid): _int_or_keep(v) for cid, v in values["rating"].items() if v.strip()}
    return _finish(
        request,
        session,
        user,
        assignment_id,
        labeling.submit_by_id,
        values=values,
        ranks=ranks,
        ratings=ratings,
        flags={str(cid): f for cid, f in values["flags"].items()},
        notes=values["notes"],
        item_notes=values["item_notes"],
        time_spent_ms=_ms(form.get("time_spent_ms")),
        confirm_inconsistent=form.get("confirm_inconsistent") == "1",
    )


def _finish(
    request: Request,
    session: Session,
    user: User,
    assignment_id: int,
    by_id: Callable[..., object | None],
    *,
    values: dict[str, Any] | None = None,
    **outcome: Any,
) -> Response:
    """The page's submit and skip: the service's call (by_id), and the page each answer shows."""
    try:
        done = by_id(session=session, assignment_id=assignment_id, user_id=user.id, **outcome)
    except labeling.SubmissionInvalid as e:
        assignment = labeling.get_assignment(session=session, assignment_id=assignment_id, user=user)
        if assignment is None:
            raise NotFound("No such assignment of yours.") from e
        error = f"{e.field}: {e.message}"
        return _page(request, session, user, assignment, error=error, values=values, status_code=422)
    except labeling.SubmissionRefused as e:
        return render(request, "labeling/empty.html", {"refused": e.message}, status_code=409)
    if done is None:
        raise NotFound("No such assignment of yours.")
    return RedirectResponse("/label", status_code=303)


def _max_tokens(request: Request) -> int:
    return int(request.app.state.settings.max_demonstration_tokens)


def _draft_id(raw: Any) -> Any:
    raw = str(raw or "").strip()
    if not raw:
        return None
    return int(raw) if raw.isdigit() and len(raw) <= 10 else raw  # the service names the field


@router.post("/label/{assignment_id}/demonstration", response_class=HTMLResponse)
def label_demonstration(
    request: Request, session: SessionDep, user: CurrentLabeler, form: FormDep, assignment_id: Id
) -> Response:
    values = {
        "reply": str(form.get("reply", "")),
        "notes": str(form.get("notes", "")),
        "draft_completion_id": str(form.get("draft_completion_id", "")),
    }
    return _finish(
        request,
        session,
        user,
        assignment_id,
        demonstrations.submit_by_id,
        values=values,
        reply=values["reply"],
        draft_completion_id=_draft_id(values["draft_completion_id"]),
        notes=values["notes"],
        time_spent_ms=_ms(form.get("time_spent_ms")),
        max_tokens=_max_tokens(request),
    )


@router.get("/label/{assignment_id}/draft", response_model=DraftOut, responses={404: {"model": ErrorOut}})
def label_draft(session: SessionDep, user: CurrentLabeler, assignment_id: Id) -> Any:
    """The draft of a demonstration task you hold, once the background job has written it."""
    assignment = labeling.get_assignment(session=session, assignment_id=assignment_id, user=user)
    if assignment is None:
        raise NotFound("No such assignment of yours.")
    draft = demonstrations.draft_of(session=session, task_id=assignment.task_id)
    if draft is None:
        raise NotFound("The draft is not ready yet.")
    return DraftOut(completion_id=draft.id, text=draft.text)


@router.post("/label/{assignment_id}/skip", response_class=HTMLResponse)
def label_skip(
    request: Request,
    session: SessionDep,
    user: CurrentLabeler,
    assignment_id: Id,
    reason: Annotated[str, Form()] = "",
    notes: Annotated[str, Form()] = "",
    time_spent_ms: Annotated[str, Form()] = "",
) -> Response:
    return _finish(
        request,
        session,
        user,
        assignment_id,
        labeling.skip_by_id,
        reason=reason,
        notes=notes,
        time_spent_ms=_ms(time_spent_ms),
    )


@router.get("/label/history", response_class=HTMLResponse)
def label_history(request: Request, session: SessionDep, user: CurrentLabeler) -> Response:
    h = history.history(session=session, user=user)
    return render(request, "labeling/history.html", {"h": h})


@router.get("/guidelines", response_class=HTMLResponse)
def guidelines_page(
    request: Request, session: SessionDep, user: CurrentUser, version: int | None = None
) -> Response:
    versions = guidelines.list_guidelines(session=session)
    shown = (
        next((g for g in versions if g.version == version), None)
        if version
        else (versions[0] if versions else None)
    )
    return render(
        request,
        "labeling/guidelines.html",
        {
            "versions": versions,
            "shown": shown,
            "html": guidelines.render_markdown(shown.body) if shown else None,
            "error": None,
        },
    )


@router.post("/guidelines", response_class=HTMLResponse)
def guidelines_save(
    request: Request, session: SessionDep, user: CurrentAdmin, body: Annotated[str, Form()] = ""
) -> Response:
    try:
        guidelines.save_guideline(session=session, body=body, user=user)
    except Invalid as e:  # nothing was written: the check comes first
        return render(
            request,
            "labeling/guidelines.html",
            {
                "versions": guidelines.list_guidelines(session=session),
                "shown": None,
                "html": None,
                "error": e.message,
            },
            status_code=422,
        )
    return RedirectResponse("/guidelines", status_code=303)


# --- JSON API -----------------------------------------------------------------------------------


@api.get(
    "/tasks/next", response_model=TaskOut, responses={204: {"description": "Nothing left for you to label."}}
)
async def api_next_task(request: Request, session: SessionDep, user: CurrentLabeler) -> Any:
    """Take the next task (or get back the one you hold): an assignment with a lease."""
    task = await in_one_hop(session, lambda: _next_task_out(request, session, user))
    return task if task is not None else Response(status_code=204)


def _next_task_out(request: Request, session: Session, user: User) -> TaskOut | None:
    assignment = labeling.next_assignment(session=session, user=user, lease_minutes=_lease_minutes(request))
    if assignment is None:
        return None
    view = labeling.task_view(session=session, assignment=assignment)
    demonstration = view.kind == SetKind.demonstration
    draft = view.completions[0] if demonstration and view.completions else None
    return TaskOut(
        kind="demonstration" if demonstration else "ranking",
        assignment_id=assignment.id,
        prompt=view.prompt,
        messages=[MessageOut(role=m["role"], content=m["content"]) for m in view.messages],
        completions=[] if demonstration else [CompletionOut(id=c.id, text=c.text) for c in view.completions],
        flags=view.flags,
        k=0 if demonstration else view.k,
        lease_expires_at=assignment.lease_expires_at,
        is_demo=view.is_demo,
        guideline_version=view.guideline_version,
        draft=DraftOut(completion_id=draft.id, text=draft.text) if draft else None,
    )


SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ProblemsOut, "description": "Names the field at fault."},
}


def _annotation_out(a: Annotation) -> AnnotationOut:
    return AnnotationOut(
        id=a.id,
        assignment_id=a.assignment_id,
        task_id=a.task_id,
        skipped=a.skip_reason,
        ranks={str(i.completion_id): i.rank for i in a.items},
        ratings={str(i.completion_id): i.rating for i in a.items},
        flags={str(i.completion_id): list(i.flags) for i in a.items},
        notes=a.notes,
        time_spent_ms=a.time_spent_ms,
        guideline_version=a.guideline_version,
        inconsistency_confirmed=a.inconsistency_confirmed,
        created_at=a.created_at,
    )


@api.post(
    "/assignments/{assignment_id}/annotation",
    response_model=AnnotationOut,
    responses=SUBMIT_RESPONSES,
)
async def api_submit(
    request: Request,
    session: SessionDep,
    user: CurrentLabeler,
    assignment_id: Id,
    body: AnnotationIn,
    want_next: Annotated[bool, Query(alias="next")] = False,
) -> Any:
    """Submit a ranking or a skip. Submitting again returns the first annotation unchanged.
    `?next=true`: the answer carries your next task too (`next`), one round trip per task."""
    return await in_one_hop(session, lambda: _submit(request, session, user, assignment_id, body, want_next))


def _submit(
    request: Request, session: Session, user: User, assignment_id: int, body: AnnotationIn, want_next: bool
) -> AnnotationOut:
    if body.skip is not None:
        if body.ranks or body.ratings or body.flags:
            raise labeling.SubmissionInvalid("skip", "a skip carries no ranks, ratings or flags")
        by_id: Callable[..., Annotation | None] = labeling.skip_by_id
        outcome: dict[str, Any] = {"reason": body.skip}
    else:
        by_id = labeling.submit_by_id
        outcome = {
            "ranks": body.ranks,
            "ratings": body.ratings,
            "flags": body.flags,
            "confirm_inconsistent": body.confirm_inconsistent,
        }
    a = by_id(
        session=session,
        assignment_id=assignment_id,
        user_id=user.id,
        notes=body.notes,
        time_spent_ms=body.time_spent_ms,
        **outcome,
    )
    if a is None:
        raise NotFound("No such assignment of yours.")
    out = _annotation_out(a)
    if want_next:
        # The submission is kept whatever taking the next task does: its rare path rolls the
        # transaction back to give a task's lock back, which must not take the annotation too.
        session.commit()
        out.next = _next_task_out(request, session, user)
    return out


@api.post(
    "/assignments/{assignment_id}/demonstration",
    response_model=DemonstrationOut,
    responses=SUBMIT_RESPONSES,
)
def api_demonstration(
    request: Request, session: SessionDep, user: CurrentLabeler, assignment_id: Id, body: DemonstrationIn
) -> Any:
    """Submit the reply you wrote for a demonstration task, or a skip. Submitting again returns
    the first answer unchanged."""
    common: dict[str, Any] = {
        "session": session,
        "assignment_id": assignment_id,
        "user_id": user.id,
        "notes": body.notes,
        "time_spent_ms": body.time_spent_ms,
    }
    if body.skip is not None:
        if body.reply is not None or body.draft_completion_id is not None:
            raise labeling.SubmissionInvalid("skip", "a skip carries no reply or draft")
        skipped = labeling.skip_by_id(reason=body.skip, **common)
        done = None if skipped is None else demonstrations.outcome(session=session, annotation=skipped)
    else:
        if body.reply is None:
            raise labeling.SubmissionInvalid("reply", 'give the reply ({"reply": "..."}) or a skip reason')
        done = demonstrations.submit_by_id(
            reply=body.reply,
            draft_completion_id=body.draft_completion_id,
            max_tokens=_max_tokens(request),
            **common,
        )
    if done is None:
        raise NotFound("No such assignment of yours.")
    a, d = done.annotation, done.demonstration
    return DemonstrationOut(
        id=a.id,
        assignment_id=a.assignment_id,
        task_id=a.task_id,
        skipped=a.skip_reason,
        reply=d.reply if d else None,
        draft_used=bool(d and d.draft_used),
        draft_completion_id=d.draft_completion_id if d else None,
        edit_distance=d.edit_distance if d else None,
        token_count=d.token_count if d else None,
        notes=a.notes,
        time_spent_ms=a.time_spent_ms,
        guideline_version=a.guideline_version,
        created_at=a.created_at,
    )
