"""Every route of create_app() × {anonymous, labeler, researcher, admin}: who gets in.

ADDING A ROUTE? Add its row to ROUTES below, "METHOD /path/{param}": the least role that may
use it. test_every_route_is_in_the_table FAILS for any route the app serves that this table
does not list. Rows for routes the app does not (yet) have are skipped, so add rows freely.

Roles:
  "public"      anyone, logged in or not
  "user"        any logged-in role
  "labeler"     labelers and admins (researchers cannot label)
  "researcher"  researchers and admins
  "admin"       admins only
Expected: anonymous -> 303 to /login for pages, 401 for /api/; a role below the row's -> 403;
an allowed role -> neither (path parameters are a nonexistent id: 404 or 422 is fine, since
authentication and role are checked before anything is looked up). Every state-changing route
also answers 403 to a logged-in, allowed user who sends no CSRF token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from starlette.routing import Mount

from app.auth import service as auth
from app.auth.models import User
from tests.factories import bearer, make_prompt_set, make_task, make_user

ROUTES: dict[str, str] = {
    # docs and health
    "GET /healthz": "public",
    "GET /api/v1/openapi.json": "public",
    "GET /api/v1/docs": "public",
    "GET /docs/oauth2-redirect": "public",
    # accounts (app/auth)
    "GET /login": "public",
    "POST /login": "public",
    "POST /logout": "user",
    "GET /": "user",
    "GET /account/tokens": "user",
    "POST /account/tokens": "user",
    "POST /account/tokens/{token_id}/revoke": "user",
    "GET /api/v1/me": "user",
    "POST /api/v1/tokens": "user",
    "DELETE /api/v1/tokens/{token_id}": "user",
    "GET /admin/users": "admin",
    "POST /admin/users": "admin",
    "POST /admin/users/{user_id}": "admin",
    "POST /admin/users/{user_id}/tokens": "admin",
    # prompt sets (app/prompts)
    "GET /sets": "admin",
    "POST /sets": "admin",
    "GET /sets/{set_id}": "admin",
    "GET /api/v1/sets": "admin",
    "POST /api/v1/sets": "admin",
    "GET /api/v1/sets/{set_id}": "admin",
    "GET /sets/new": "admin",
    "GET /sets/{set_id}/progress": "admin",
    "POST /sets/{set_id}/cancel": "admin",
    "POST /sets/{set_id}/resume": "admin",
    "POST /api/v1/sets/{set_id}/cancel": "admin",
    "POST /sets/{set_id}/settings": "admin",
    # prompts written by labelers (app/prompts/proposal_views.py)
    "GET /prompts/write": "labeler",
    "POST /prompts/write": "labeler",
    "POST /api/v1/prompts/proposals": "labeler",
    "GET /api/v1/prompts/proposals": "labeler",
    "GET /proposals": "admin",
    "GET /proposals/{proposal_id}": "admin",
    "POST /proposals/{proposal_id}/accept": "admin",
    "POST /proposals/{proposal_id}/reject": "admin",
    # labeling (app/labeling)
    "GET /label": "labeler",
    "POST /label/{assignment_id}": "labeler",
    "POST /label/{assignment_id}/skip": "labeler",
    "POST /label/{assignment_id}/demonstration": "labeler",
    "GET /label/{assignment_id}/draft": "labeler",
    "GET /label/history": "labeler",
    "GET /guidelines": "user",
    "POST /guidelines": "admin",
    "GET /api/v1/tasks/next": "labeler",
    "POST /api/v1/assignments/{assignment_id}/annotation": "labeler",
    "POST /api/v1/assignments/{assignment_id}/demonstration": "labeler",
    # review of demonstrations (app/demonstrations)
    "GET /demonstrations": "researcher",
    "POST /demonstrations/accept": "researcher",
    "POST /demonstrations/{demonstration_id}/accept": "researcher",
    "POST /demonstrations/{demonstration_id}/reject": "researcher",
    "POST /demonstrations/{demonstration_id}/edit": "researcher",
    # exports and data quality (app/exports)
    "GET /exports": "researcher",
    "GET /exports/download": "researcher",
    "GET /exports/manifest": "researcher",
    "GET /exports/import": "researcher",
    "POST /exports/import": "researcher",
    "GET /quality": "researcher",
    "GET /api/v1/exports/{fmt}": "researcher",
    "GET /api/v1/exports/{fmt}/manifest": "researcher",
    "GET /api/v1/quality": "researcher",
    # runs and models (app/runs)
    "GET /runs": "researcher",
    "GET /runs/{job_id}": "researcher",
    "POST /runs/{job_id}/cancel": "researcher",
    "GET /models": "researcher",
    "POST /models/{model_id}/activate": "researcher",
    "POST /models/{model_id}/promote": "researcher",
    "GET /api/v1/jobs": "researcher",
    "GET /api/v1/jobs/{job_id}": "researcher",
    "POST /api/v1/jobs/{job_id}/cancel": "researcher",
    "POST /api/v1/jobs/train_reward": "researcher",
    "POST /api/v1/jobs/train_ppo": "researcher",
    "POST /api/v1/jobs/train_sft": "researcher",
    "GET /api/v1/models": "researcher",
    "POST /api/v1/models/{model_id}/activate": "researcher",
    # starting training runs and the round (app/runs/launch*.py)
    "GET /runs/new/reward": "researcher",
    "POST /runs/new/reward": "researcher",
    "GET /runs/new/sft": "researcher",
    "POST /runs/new/sft": "researcher",
    "GET /runs/new/ppo": "researcher",
    "POST /runs/new/ppo": "researcher",
    "GET /runs/new/round": "researcher",
    "POST /runs/round": "researcher",
}

# Routes whose answer never ends for an allowed user (server-sent events): only the refusals
# are checked for them.
NEVER_ENDING: set[str] = set()

ALLOWED = {
    "public": {None, "labeler", "researcher", "admin"},
    "user": {"labeler", "researcher", "admin"},
    "labeler": {"labeler", "admin"},
    "researcher": {"researcher", "admin"},
    "admin": {"admin"},
}
SAFE = {"GET", "HEAD", "OPTIONS"}
MISSING_ID = "987654"
ANON_CSRF = "anon-csrf-for-the-matrix"


def app_routes(app: FastAPI) -> set[str]:
    """ "METHOD /path" for every route the app serves (static files aside), however FastAPI
    nests included routers."""
    out: set[str] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        for ctx in contexts:
            out.update(f"{m} {ctx.path}" for m in ctx.methods if m != "HEAD")  # type: ignore[attr-defined]
    return out


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLite unless a test asks for both (`BOTH_DATABASES`): who gets in does not depend on the
    database (the auth tests run on both), and this table grows with every feature."""
    which = getattr(request, "param", "sqlite")
    return str(request.getfixturevalue("sqlite_url" if which == "sqlite" else "pg_url"))


BOTH_DATABASES = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Who:
    role: str | None
    cookie: str = ""
    csrf: str = ""


@pytest.fixture
def people(session: Session) -> dict[str | None, Who]:
    """A browser session per role, made directly (no password hashing: it is not under test)."""
    out: dict[str | None, Who] = {None: Who(None)}
    for role in ("labeler", "researcher", "admin"):
        user = User(username=f"matrix-{role}", password_hash="!", role=role)
        session.add(user)
        session.flush()
        cookie, row = auth.start_session(session=session, user=user, hours=1)
        out[role] = Who(role, cookie, row.csrf_token)
    return out


@pytest.fixture
def bare_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c:
        yield c


def call(client: TestClient, key: str, who: Who, *, csrf: bool = True):  # type: ignore[no-untyped-def]
    method, path = key.split(" ", 1)
    url = re.sub(r"\{[^}]+\}", MISSING_ID, path)
    cookies = {"ranklab_csrf": ANON_CSRF}
    headers: dict[str, str] = {}
    if who.role is not None:
        cookies["ranklab_session"] = who.cookie
        if csrf:
            headers["X-CSRF-Token"] = who.csrf
    headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    data = {"csrf_token": ANON_CSRF} if method not in SAFE and csrf else None
    client.cookies.clear()
    return client.request(method, url, headers=headers, data=data, follow_redirects=False)


def test_every_route_is_in_the_table(app: FastAPI) -> None:
    missing = sorted(app_routes(app) - set(ROUTES))
    assert not missing, (
        "Routes with no row in tests/test_routes_matrix.py ROUTES (add each with its least "
        f"role: public, user, labeler, researcher, admin): {missing}"
    )


def test_every_row_names_a_known_role() -> None:
    assert set(ROUTES.values()) <= set(ALLOWED)
    assert all(re.fullmatch(r"(GET|POST|PUT|PATCH|DELETE) /\S*", key) for key in ROUTES)


@pytest.mark.parametrize("key", sorted(ROUTES))
def test_who_gets_in(key: str, app: FastAPI, bare_client: TestClient, people: dict[str | None, Who]) -> None:
    if key not in app_routes(app):
        pytest.skip(f"{key} is not served (yet)")
    minimal = ROUTES[key]
    is_api = key.split(" ", 1)[1].startswith("/api/")
    for role in (None, "labeler", "researcher", "admin"):
        if role in ALLOWED[minimal] and key in NEVER_ENDING:
            continue
        r = call(bare_client, key, people[role])
        where = f"{key} as {role or 'anonymous'}: {r.status_code} {r.text[:200]}"
        if role in ALLOWED[minimal]:
            assert r.status_code not in (401, 403), where
            assert r.status_code < 500, where
            assert not r.headers.get("location", "").startswith("/login?"), where
        elif role is None:
            if is_api:
                assert r.status_code == 401, where
                assert r.json()["detail"], where
            else:
                assert r.status_code == 303, where
                assert r.headers["location"].startswith("/login?next="), where
        else:
            assert r.status_code == 403, where
            assert "role" in r.text, where


@pytest.mark.parametrize("key", sorted(k for k in ROUTES if k.split()[0] not in SAFE))
def test_state_changing_routes_need_the_csrf_token(
    key: str, app: FastAPI, bare_client: TestClient, people: dict[str | None, Who]
) -> None:
    if key not in app_routes(app):
        pytest.skip(f"{key} is not served (yet)")
    allowed = [r for r in ("admin", "researcher", "labeler") if r in ALLOWED[ROUTES[key]]]
    r = call(bare_client, key, people[allowed[0]], csrf=False)
    assert r.status_code == 403, f"{key}: {r.status_code} {r.text[:200]}"
    assert "CSRF" in r.text


# Out of range (2**63 does not fit 64 bits, 2**31 not the 32-bit columns of PostgreSQL), never
# an id (0, -1), not a number at all.
BAD_IDS = {str(2**63): 404, str(2**31): 404, "0": 404, "-1": 404, "abc": 422}
ID_ROUTES = sorted(k for k in ROUTES if re.search(r"\{\w+_id\}", k))


@BOTH_DATABASES
@pytest.mark.parametrize("key", ID_ROUTES)
def test_a_bad_path_id_is_404_or_422_never_500(
    key: str, app: FastAPI, bare_client: TestClient, people: dict[str | None, Who]
) -> None:
    if key not in app_routes(app):
        pytest.skip(f"{key} is not served (yet)")
    admin = people["admin"]  # allowed everywhere: the id is what is under test
    method, path = key.split(" ", 1)
    for bad, expected in BAD_IDS.items():
        r = call(bare_client, f"{method} {re.sub(r'{[^}]+}', bad, path)}", admin)
        assert r.status_code == expected, f"{key} with {bad}: {r.status_code} {r.text[:200]}"
        if path.startswith("/api/"):
            assert r.json()["detail"], key
        else:  # a browser route answers with a page, not JSON
            assert r.headers["content-type"].startswith("text/html"), (key, bad)


@BOTH_DATABASES
def test_a_422_under_the_api_has_one_shape(client: TestClient, session: Session) -> None:
    """Labeling, exports, prompts and FastAPI's own validation: {"detail": [{field, message,
    file, line, text}]}, the field named."""
    labeler, admin = make_user(session), make_user(session, role="admin")
    task = make_task(session, prompt_set=make_prompt_set(session, k=3))
    h_lab = bearer(auth.create_token(session=session, user=labeler).token)
    h_admin = bearer(auth.create_token(session=session, user=admin).token)
    aid = client.get("/api/v1/tasks/next", headers=h_lab).json()["assignment_id"]
    ids = [c.id for c in task.completions]
    answers = {
        "labeling": client.post(
            f"/api/v1/assignments/{aid}/annotation",
            headers=h_lab,
            json={"ranks": {str(ids[0]): 1}, "ratings": {}},
        ),
        "exports": client.get("/api/v1/exports/trl?margin=huge", headers=h_admin),
        "prompts": client.post(
            "/api/v1/sets",
            headers=h_admin,
            data={"name": "s", "k": "99"},
            files={"file": ("p.csv", b"prompt\nOne\n", "text/csv")},
        ),
        "validation": client.get("/api/v1/jobs?limit=0", headers=h_admin),
    }
    fields = {}
    for where, r in answers.items():
        assert r.status_code == 422, (where, r.text)
        body = r.json()
        assert list(body) == ["detail"] and body["detail"], (where, body)
        for item in body["detail"]:
            assert set(item) == {"field", "message", "file", "line", "text"}, (where, item)
            assert item["message"] and item["text"], (where, item)
        fields[where] = body["detail"][0]["field"]
    assert fields == {"labeling": "ranks", "exports": "margin", "prompts": "k", "validation": "query.limit"}
