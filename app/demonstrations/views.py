"""/demonstrations: researchers and admins review what labelers wrote (htmx row actions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.auth.deps import CurrentResearcher
from app.auth.models import User
from app.db import SessionDep
from app.demonstrations import service
from app.errors import MAX_ROW_ID, DomainError, Id, Invalid
from app.exports.filters import pseudonym
from app.labeling.models import Demonstration, ReviewStatus
from app.prompts import service as prompts
from app.web import FormDep, attempt, is_htmx, render

router = APIRouter(tags=["demonstrations"])
api = APIRouter(tags=["demonstrations"])

RowId = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]


def _common(request: Request, session: Session) -> dict[str, Any]:
    secret = request.app.state.settings.secret_key
    return {"who": lambda uid: pseudonym(uid, secret), "statuses": list(ReviewStatus)}


@router.get("/demonstrations", response_class=HTMLResponse)
def demonstrations_page(
    request: Request,
    session: SessionDep,
    user: CurrentResearcher,
    set_id: Annotated[RowId, Query(alias="set")] = None,
    labeler: RowId = None,
    status: str = "",
) -> Response:
    chosen = status if status in set(ReviewStatus) else ""
    rows = service.listing(session=session, set_id=set_id, user_id=labeler, status=chosen or None)
    ctx = {
        **_common(request, session),
        "rows": rows,
        "sets": prompts.list_sets(session=session),
        "labelers": service.labeler_ids(session=session),
        "selected": {"set": set_id, "labeler": labeler, "status": chosen},
    }
    return render(request, "demonstrations/list.html", ctx)


def _row(request: Request, session: Session, demo: Demonstration, refused: DomainError | None) -> Response:
    """htmx: the row again (with the refusal, if any); a plain form: back to the list, or the error."""
    if refused is not None and not is_htmx(request):
        raise refused
    if not is_htmx(request):
        return RedirectResponse("/demonstrations", status_code=303)
    row = service.listing(session=session, demo_id=demo.id)[0]
    ctx = {**_common(request, session), "r": row, "error": str(refused) if refused else None}
    return render(request, "demonstrations/list.html", ctx, block="row")


def _act(request: Request, session: Session, demo_id: int, user: User, action: str, form: Any) -> Response:
    demo = service.get(session=session, demo_id=demo_id)
    reason, reply = str(form.get("reason", "")), str(form.get("reply", ""))
    actions: dict[str, Callable[[], None]] = {
        "accept": lambda: service.accept(session=session, demo=demo, reviewer=user),
        "reject": lambda: service.reject(session=session, demo=demo, reviewer=user, reason=reason),
        "edit": lambda: service.edit(session=session, demo=demo, reviewer=user, reply=reply),
    }
    return _row(request, session, demo, attempt(session, actions[action]))


def _review_route(action: str, doc: str) -> None:
    """POST /demonstrations/{id}/ACTION: one reviewer action on one demonstration, answered with
    its refreshed row."""

    def review(
        demonstration_id: Id, request: Request, session: SessionDep, user: CurrentResearcher, form: FormDep
    ) -> Response:
        return _act(request, session, demonstration_id, user, action, form)

    review.__name__, review.__doc__ = action, doc
    router.post(f"/demonstrations/{{demonstration_id}}/{action}", response_class=HTMLResponse)(review)


_review_route("accept", "Accept: the demonstration counts for training as written.")
_review_route("reject", "Reject with a reason; the demonstration no longer counts for training.")
_review_route("edit", "The reviewer's version goes to edited_reply (training uses it); the labeler's stays.")


@router.post("/demonstrations/accept", response_class=HTMLResponse)
def accept_many(session: SessionDep, user: CurrentResearcher, form: FormDep) -> Response:
    """Accept every ticked demonstration not yet reviewed."""
    raw = [str(v) for v in form.getlist("ids")]
    bad = [v for v in raw if not (v.isdigit() and len(v) <= 10 and 1 <= int(v) <= MAX_ROW_ID)]
    if bad:
        raise Invalid("ids", "not demonstration ids: " + ", ".join(repr(v[:20]) for v in bad[:5]))
    ids = [int(v) for v in raw]
    service.accept_many(session=session, ids=ids, reviewer=user)
    return RedirectResponse("/demonstrations", status_code=303)
