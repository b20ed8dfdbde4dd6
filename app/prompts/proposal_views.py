"""Prompts written by labelers: the form (/prompts/write) and API, the admins' queue (/proposals)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.auth.deps import CurrentAdmin, CurrentLabeler
from app.db import SessionDep, undone_on_error
from app.errors import MAX_ROW_ID, DomainError, Id, Invalid, ProblemsOut
from app.prompts import proposals, service
from app.prompts.models import PROMPT_CATEGORIES, PromptProposal, ProposalStatus
from app.prompts.schemas import ProposalIn, ProposalOut
from app.web import FormDep, attempt, is_htmx, render

router = APIRouter(tags=["prompts"])
api = APIRouter(tags=["prompts"])


def conversation_from_form(form: FormData) -> list[dict[str, str]]:
    """The conversation editor's fields: an optional `system`, then `role`/`content` pairs."""
    system = str(form.get("system", ""))
    conv = [{"role": "system", "content": system}] if system.strip() else []
    roles, contents = form.getlist("role"), form.getlist("content")
    conv += [{"role": str(r), "content": str(c)} for r, c in zip(roles, contents, strict=False)]
    return conv


def _int(raw: Any, field: str) -> int:
    text = str(raw or "").strip()
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_ROW_ID:
        raise Invalid(field, f"choose a prompt set (got {text!r})")
    return int(text)


# --- labelers: writing ------------------------------------------------------------------------


def _write_page(
    request: Request,
    session: Session,
    *,
    values: dict[str, Any] | None = None,
    error: str | None = None,
    sent: PromptProposal | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "prompts/write.html",
        {
            "sets": proposals.open_sets(session=session),
            "categories": PROMPT_CATEGORIES,
            "values": values or {"messages": [{"role": "user", "content": ""}]},
            "error": error,
            "sent": sent,
        },
        status_code=status_code,
    )


@router.get("/prompts/write", response_class=HTMLResponse)
def write_page(
    request: Request,
    session: SessionDep,
    user: CurrentLabeler,
    set_id: int | None = Query(None, alias="set"),
    sent: int | None = Query(None),
) -> Response:
    values = {"prompt_set_id": set_id, "messages": [{"role": "user", "content": ""}]}
    done = None
    if sent is not None and 1 <= sent <= MAX_ROW_ID:
        done = session.get(PromptProposal, sent)
        done = done if done is not None and done.user_id == user.id else None
    return _write_page(request, session, values=values, sent=done)


@router.post("/prompts/write", response_class=HTMLResponse)
def write_submit(request: Request, session: SessionDep, user: CurrentLabeler, form: FormDep) -> Response:
    conv = conversation_from_form(form)
    values = {
        "prompt_set_id": str(form.get("prompt_set_id", "")),
        "category": str(form.get("category", "")),
        "system": str(form.get("system", "")),
        "messages": [m for m in conv if m["role"] != "system"] or [{"role": "user", "content": ""}],
    }
    try:
        with undone_on_error(session):
            proposal = proposals.propose(
                session=session,
                settings=request.app.state.settings,
                user=user,
                prompt_set_id=_int(form.get("prompt_set_id"), "prompt_set_id"),
                messages=conv,
                category=str(form.get("category", "")),
            )
    except Invalid as exc:
        return _write_page(request, session, values=values, error=str(exc), status_code=422)
    return RedirectResponse(f"/prompts/write?sent={proposal.id}", status_code=303)


@api.post(
    "/prompts/proposals",
    response_model=ProposalOut,
    status_code=201,
    responses={422: {"model": ProblemsOut, "description": "Refused: the field at fault is named."}},
)
def propose_api(body: ProposalIn, request: Request, session: SessionDep, user: CurrentLabeler) -> ProposalOut:
    """Write a prompt for a set that takes written prompts; it waits for an admin's review."""
    return ProposalOut.model_validate(
        proposals.propose(
            session=session,
            settings=request.app.state.settings,
            user=user,
            prompt_set_id=body.prompt_set_id,
            messages=body.messages,
            category=body.category,
        )
    )


@api.get("/prompts/proposals", response_model=list[ProposalOut])
def my_proposals_api(session: SessionDep, user: CurrentLabeler) -> list[ProposalOut]:
    """The prompts you wrote, newest first, with what became of them."""
    return [
        ProposalOut.model_validate(r.proposal) for r in proposals.listing(session=session, user_id=user.id)
    ]


# --- admins: the review queue -----------------------------------------------------------------


def _queue_ctx(session: Session) -> dict[str, Any]:
    return {"sets": service.list_sets(session=session), "categories": PROMPT_CATEGORIES}


@router.get("/proposals", response_class=HTMLResponse)
def queue_page(
    request: Request, session: SessionDep, admin: CurrentAdmin, status: str = Query("pending")
) -> Response:
    chosen = status if status in set(ProposalStatus) else None
    rows = proposals.listing(session=session, user_id=None, status=chosen)
    ctx = {**_queue_ctx(session), "rows": rows, "status": chosen or "all", "statuses": list(ProposalStatus)}
    return render(request, "prompts/proposals.html", ctx)


def _row_of(session: Session, proposal: PromptProposal) -> proposals.Row:
    return proposals.listing(session=session, user_id=None, proposal_id=proposal.id)[0]


def _detail(
    request: Request,
    session: Session,
    proposal: PromptProposal,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    ctx = {**_queue_ctx(session), "r": _row_of(session, proposal), "error": error}
    return render(request, "prompts/proposal.html", ctx, status_code=status_code)


@router.get("/proposals/{proposal_id}", response_class=HTMLResponse)
def proposal_page(proposal_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    return _detail(request, session, proposals.get(session=session, proposal_id=proposal_id))


def _after(
    request: Request, session: Session, proposal: PromptProposal, refused: DomainError | None
) -> Response:
    """htmx: the queue's row, redrawn (with the refusal, if any); else the queue or the page again."""
    error = str(refused) if refused is not None else None
    if is_htmx(request):
        ctx = {**_queue_ctx(session), "r": _row_of(session, proposal), "error": error}
        return render(request, "prompts/proposals.html", ctx, block="row")
    if refused is not None:
        return _detail(request, session, proposal, error=error, status_code=refused.status_code)
    return RedirectResponse("/proposals", status_code=303)


@router.post("/proposals/{proposal_id}/accept", response_class=HTMLResponse)
def accept(
    proposal_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin, form: FormDep
) -> Response:
    """Accept into the chosen set; with `edited=1` the conversation fields replace what was written."""
    proposal = proposals.get(session=session, proposal_id=proposal_id)
    refused = attempt(
        session,
        lambda: proposals.accept(
            session=session,
            settings=request.app.state.settings,
            proposal=proposal,
            reviewer=admin,
            prompt_set_id=_int(form.get("prompt_set_id"), "prompt_set_id"),
            messages=conversation_from_form(form) if form.get("edited") == "1" else None,
        ),
    )
    return _after(request, session, proposal, refused)


@router.post("/proposals/{proposal_id}/reject", response_class=HTMLResponse)
def reject(
    proposal_id: Id, request: Request, session: SessionDep, admin: CurrentAdmin, form: FormDep
) -> Response:
    proposal = proposals.get(session=session, proposal_id=proposal_id)
    reason = str(form.get("reason", ""))
    refused = attempt(
        session, lambda: proposals.reject(session=session, proposal=proposal, reviewer=admin, reason=reason)
    )
    return _after(request, session, proposal, refused)
