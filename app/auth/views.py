"""Login, logout, the home page, API tokens, and user management under /admin/."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.auth import security
from app.auth import service as auth
from app.auth.deps import (
    ANON_CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    CurrentAdmin,
    CurrentUser,
    Forbidden,
    OptionalPrincipal,
)
from app.auth.models import ApiToken, Role, User
from app.auth.schemas import MeOut, TokenOut
from app.db import SessionDep
from app.errors import Id, Name, NotFound, found
from app.web import render

COOKIE_MAX_AGE = 30 * 24 * 3600

router = APIRouter(tags=["accounts"])
api = APIRouter(tags=["accounts"])


def _safe_next(target: str | None) -> str:
    # Only same-site paths: never an open redirect to another host. Browsers read "/\\host" as
    # "//host", and drop tabs and newlines, so a backslash or control character is refused too.
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(c) < 32 for c in target)
    ):
        return target
    return "/"


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        path="/",
    )


@router.get("/healthz", include_in_schema=False)
def healthz(session: SessionDep) -> Response:
    """For load balancers and compose healthchecks: 200 when the database answers, else 503."""
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, principal: OptionalPrincipal, next: str | None = None) -> Response:
    if principal is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_form(request, next=next)


def _login_form(
    request: Request,
    *,
    next: str | None,
    error: str | None = None,
    status_code: int = 200,
    username: str = "",
) -> Response:
    anon = request.cookies.get(ANON_CSRF_COOKIE) or security.new_token()
    request.state.anon_csrf = anon
    response = render(
        request,
        "auth/login.html",
        {"next": _safe_next(next), "error": error, "username": username},
        status_code=status_code,
    )
    _set_cookie(request, response, ANON_CSRF_COOKIE, anon)
    return response


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    # Optional here so that a missing CSRF token is refused (403) before anything is validated.
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD)] = "",
    next: Annotated[str | None, Form()] = None,
) -> Response:
    if not security.same(csrf_token, request.cookies.get(ANON_CSRF_COOKIE)):
        raise Forbidden("Missing or wrong CSRF token: reload the login page and try again.")
    if not username.strip() or not password:
        return _login_form(
            request, next=next, error="Enter your username and password.", status_code=422, username=username
        )
    ip = request.client.host if request.client else None
    try:
        user = auth.authenticate(session=session, username=username.strip(), password=password, ip=ip)
    except auth.Throttled as exc:
        session.commit()
        response = _login_form(request, next=next, error=str(exc), status_code=429, username=username)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except auth.AuthError as exc:
        session.commit()  # keep the failure on record: it is what slows the next guess
        return _login_form(request, next=next, error=str(exc), status_code=401, username=username)
    hours = request.app.state.settings.session_hours
    token, _ = auth.start_session(session=session, user=user, hours=hours)
    response = RedirectResponse(_safe_next(next), status_code=303)
    # The server's sliding expiry decides when a login ends; a cookie that died `hours` after
    # login would log out someone who has been active all along.
    _set_cookie(request, response, SESSION_COOKIE, token, max_age=COOKIE_MAX_AGE)
    response.delete_cookie(ANON_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    principal = request.state.principal
    if principal.user_session is not None:
        auth.end_session(session=session, user_session=principal.user_session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, user: CurrentUser) -> Response:
    return render(request, "home.html", {"Role": Role})


# --- API tokens: each user manages their own; admins also anyone's ---------------------------


@router.get("/account/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    return render(
        request,
        "auth/tokens.html",
        {"tokens": auth.list_tokens(session=session, user=user), "new_token": None},
    )


@router.post("/account/tokens", response_class=HTMLResponse)
def create_token_page(
    request: Request, session: SessionDep, user: CurrentUser, name: Annotated[Name, Form()] = "api"
) -> Response:
    new = auth.create_token(session=session, user=user, name=name.strip())
    return render(
        request,
        "auth/tokens.html",
        {"tokens": auth.list_tokens(session=session, user=user), "new_token": new.token},
        status_code=201,
    )


def _own_token(session: SessionDep, user: User, token_id: int) -> ApiToken:
    token = found(session.get(ApiToken, token_id), f"No API token {token_id}.")
    if token.user_id != user.id and user.role != Role.admin:
        raise Forbidden("That token is not yours.")
    return token


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token_page(token_id: Id, session: SessionDep, user: CurrentUser) -> Response:
    token = _own_token(session, user, token_id)
    auth.revoke_token(session=session, token=token)
    return RedirectResponse("/account/tokens", status_code=303)


@api.get("/me", response_model=MeOut)
def me(request: Request, user: CurrentUser) -> MeOut:
    return MeOut(id=user.id, username=user.username, role=user.role, auth=request.state.principal.via)


@api.post("/tokens", response_model=TokenOut, status_code=201)
def create_token_api(session: SessionDep, user: CurrentUser, name: Name = "api") -> TokenOut:
    """A new token for yourself. The token is in this answer only; it is stored hashed."""
    new = auth.create_token(session=session, user=user, name=name)
    return TokenOut(id=new.row.id, name=new.row.name, token=new.token)


@api.delete("/tokens/{token_id}", status_code=204)
def revoke_token_api(token_id: Id, session: SessionDep, user: CurrentUser) -> Response:
    token = _own_token(session, user, token_id)
    auth.revoke_token(session=session, token=token)
    return Response(status_code=204)


# --- user management ------------------------------------------------------------------------


def _users_page(
    request: Request,
    session: SessionDep,
    *,
    error: str | None = None,
    new_token: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "auth/users.html",
        {
            "users": auth.list_users(session=session),
            "roles": list(Role),
            "error": error,
            "new_token": new_token,
        },
        status_code=status_code,
    )


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, session: SessionDep, admin: CurrentAdmin) -> Response:
    return _users_page(request, session)


@router.post("/admin/users", response_class=HTMLResponse)
def create_user_page(
    request: Request,
    session: SessionDep,
    admin: CurrentAdmin,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()],
) -> Response:
    try:
        auth.create_user(session=session, username=username.strip(), password=password, role=role)
    except auth.AuthError as exc:
        return _users_page(request, session, error=str(exc), status_code=422)
    return RedirectResponse("/admin/users", status_code=303)


def _target_user(session: SessionDep, user_id: int) -> User:
    target = session.get(User, user_id)
    if target is None or target.is_system:
        raise NotFound(f"No user {user_id}.")
    return target


@router.post("/admin/users/{user_id}", response_class=HTMLResponse)
def update_user_page(
    request: Request,
    session: SessionDep,
    admin: CurrentAdmin,
    user_id: Id,
    role: Annotated[str | None, Form()] = None,
    active: Annotated[str | None, Form()] = None,
) -> Response:
    target = _target_user(session, user_id)
    if active not in (None, "true", "false"):  # anything else must not read as "deactivate"
        return _users_page(request, session, status_code=422, error="active: 'true' or 'false'")
    is_active = None if active is None else active == "true"
    if target.id == admin.id and (is_active is False or (role and role != Role.admin)):
        return _users_page(
            request,
            session,
            status_code=422,
            error="You cannot demote or deactivate yourself; ask another admin.",
        )
    try:
        auth.update_user(session=session, user=target, role=role, is_active=is_active)
    except auth.AuthError as exc:
        return _users_page(request, session, error=str(exc), status_code=422)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{user_id}/tokens", response_class=HTMLResponse)
def create_token_for_user(
    request: Request, session: SessionDep, admin: CurrentAdmin, user_id: Id
) -> Response:
    target = _target_user(session, user_id)
    new = auth.create_token(session=session, user=target, name=f"by {admin.username}")
    return _users_page(request, session, new_token=f"{target.username}: {new.token}", status_code=201)
