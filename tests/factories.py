"""Plain typed factories for tests."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.deps import ANON_CSRF_COOKIE
from app.auth.models import Role, User
from app.runs import service as jobs
from app.runs.models import Job

PASSWORD = "correct horse battery"
_seq = itertools.count(1)


def make_user(session: Session, *, role: str = Role.labeler, username: str | None = None,
              password: str = PASSWORD) -> User:
    return auth.create_user(session=session, username=username or f"{role}{next(_seq)}",
                            password=password, role=role)


def make_job(session: Session, *, kind: str = "noop", params: dict[str, Any] | None = None,
             **kw: Any) -> Job:
    return jobs.enqueue(session=session, kind=kind, params=params, **kw)


def login(client: TestClient, user: User, password: str = PASSWORD) -> str:
    """Log the client in through the real form; returns the session's CSRF token."""
    client.get("/login")
    r = client.post("/login", data={"username": user.username, "password": password,
                                    "csrf_token": client.cookies.get(ANON_CSRF_COOKIE, "")},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    """The CSRF token the pages of a logged-in client carry."""
    import re

    page = client.get("/account/tokens").text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
