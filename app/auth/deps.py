"""Who is asking, and may they: the one place that answers 401, 403 or a redirect to login.

Every route depends on one of the role aliases at the bottom. Browser requests carry the
session cookie and, when they change anything, a CSRF token (form field `csrf_token` or header
`X-CSRF-Token`); API requests carry `Authorization: Bearer <token>` and need no CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth import security
from app.auth import service as auth
from app.auth.models import Role, User, UserSession
from app.db import SessionDep

SESSION_COOKIE = "ranklab_session"
ANON_CSRF_COOKIE = "ranklab_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class LoginRequired(Exception):
    def __init__(self, message: str = "Please log in.") -> None:
        self.message = message


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


@dataclass
class Principal:
    user: User
    via: str  # "cookie" or "token"
    user_session: UserSession | None = None


async def submitted_csrf_token(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()  # Starlette caches it for the endpoint's own Form() params
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise LoginRequired("The Authorization header must be 'Bearer <token>'.")
    return token.strip()


def _cached_principal(request: Request, session: Session) -> Principal | None:
    """The principal from this process's short login cache, without a query; None: not cached."""
    if (token := _bearer(request)) is not None:
        user = auth.cached_api_user(session=session, token=token)
        return Principal(user=user, via="token") if user is not None else None
    if cookie := request.cookies.get(SESSION_COOKIE):
        row = auth.cached_session(session=session, token=cookie)
        return Principal(user=row.user, via="cookie", user_session=row) if row is not None else None
    return None


async def resolve_principal(request: Request, session: Session) -> Principal | None:
    """Whose token or cookie this is. A login in the short cache is answered here on the event
    loop (no query, no hop to a thread); a lookup runs in the thread pool, so its database reads
    never block the event loop."""
    if (cached := _cached_principal(request, session)) is not None:
        return cached
    return await run_in_threadpool(_lookup_principal, request, session)


def _lookup_principal(request: Request, session: Session) -> Principal | None:
    if (token := _bearer(request)) is not None:
        user = auth.user_for_api_token(
            session=session, token=token, cache_seconds=request.app.state.settings.auth_cache_seconds
        )
        if user is None:
            raise LoginRequired("This API token is unknown or revoked. Create a new one.")
        return Principal(user=user, via="token")
    if cookie := request.cookies.get(SESSION_COOKIE):
        settings = request.app.state.settings
        row = auth.session_for_token(
            session=session,
            token=cookie,
            hours=settings.session_hours,
            cache_seconds=settings.auth_cache_seconds,
        )
        if row is None:
            raise LoginRequired("Your session has ended. Please log in again.")
        return Principal(user=row.user, via="cookie", user_session=row)
    return None


async def get_principal(request: Request, session: Session) -> Principal | None:
    """The principal, after checking the CSRF token of a cookie-authenticated change. Called by
    `require`'s dependency, not a dependency of its own: each level of FastAPI's dependency
    solving costs CPU on every request."""
    principal = await resolve_principal(request, session)
    if principal is not None and principal.user_session is not None and (request.method not in SAFE_METHODS):
        sent = await submitted_csrf_token(request)
        if not security.same(sent, principal.user_session.csrf_token):
            raise Forbidden("Missing or wrong CSRF token: reload the page and try again.")
    request.state.principal = principal
    return principal


def require(*roles: Role) -> Callable[..., Awaitable[User]]:
    needed = " or ".join(r.value for r in roles)

    async def dependency(request: Request, session: SessionDep) -> User:
        principal = await get_principal(request, session)
        if principal is None:
            raise LoginRequired()
        if not principal.user.can(*roles):
            raise Forbidden(f"This page needs the {needed} role; you are a {principal.user.role}.")
        return principal.user

    return dependency


def get_optional_principal(request: Request, session: SessionDep) -> Principal | None:
    """Who is asking, or None. A stale session cookie counts as anonymous here (the login page
    must not answer an expired cookie with a redirect to itself); a bad API token still fails.
    Only pages that change nothing use it, so there is no CSRF token to check."""
    try:
        principal = _lookup_principal(request, session)
    except LoginRequired:
        if request.headers.get("authorization"):
            raise
        principal = None
    request.state.principal = principal
    return principal


OptionalPrincipal = Annotated[Principal | None, Depends(get_optional_principal)]
CurrentUser = Annotated[User, Depends(require(Role.labeler, Role.researcher, Role.admin))]
CurrentLabeler = Annotated[User, Depends(require(Role.labeler))]
CurrentResearcher = Annotated[User, Depends(require(Role.researcher))]
CurrentAdmin = Annotated[User, Depends(require(Role.admin))]
