"""API tokens: made for yourself (or by an admin for someone), shown once, stored hashed,
sent as Bearer, revocable, acting with their user's role. Plus /api/v1/me and /healthz."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.deps import CurrentAdmin, CurrentLabeler, CurrentResearcher
from app.auth.models import ApiToken, Role, User
from tests.factories import bearer, login, make_user

TOKEN_RE = re.compile(r'<code class="token">(?:[^:<]+: )?(rl_[A-Za-z0-9_-]+)</code>')


def all_db_text(session: Session) -> str:
    """Every value in the token, session and user tables, as one string."""
    out = []
    for table in ("api_token", "user_session", "user"):
        for row in session.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
            out.extend(str(v) for v in row)
    return " ".join(out)


def add_probe_routes(app: FastAPI) -> None:
    """One API route per role, to check what a token can reach regardless of which features
    exist yet."""

    @app.get("/api/v1/_probe/labeler")
    def _lab(user: CurrentLabeler) -> dict[str, str]:
        return {"ok": user.username}

    @app.get("/api/v1/_probe/researcher")
    def _res(user: CurrentResearcher) -> dict[str, str]:
        return {"ok": user.username}

    @app.get("/api/v1/_probe/admin")
    def _adm(user: CurrentAdmin) -> dict[str, str]:
        return {"ok": user.username}


class TestCreate:
    def test_the_page_shows_a_new_token_once_and_stores_only_its_hash(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        csrf = login(client, user)
        r = client.post("/account/tokens", data={"name": "laptop", "csrf_token": csrf})
        assert r.status_code == 201
        match = TOKEN_RE.search(r.text)
        assert match
        raw = match.group(1)
        assert raw not in client.get("/account/tokens").text  # shown once
        assert raw not in all_db_text(session)
        row = session.scalar(select(ApiToken))
        assert row is not None and row.name == "laptop" and row.user_id == user.id
        assert raw.startswith(row.prefix)
        assert client.get("/api/v1/me", headers=bearer(raw)).json() == {
            "id": user.id,
            "username": user.username,
            "role": "labeler",
            "auth": "token",
        }

    def test_post_api_tokens_for_yourself(self, client: TestClient, session: Session) -> None:
        user = make_user(session, role=Role.researcher)
        first = auth.create_token(session=session, user=user).token
        r = client.post("/api/v1/tokens?name=ci", headers=bearer(first))
        assert r.status_code == 201
        body = r.json()
        assert body["name"] == "ci" and body["token"].startswith("rl_")
        assert body["token"] not in all_db_text(session)
        assert client.get("/api/v1/me", headers=bearer(body["token"])).json()["username"] == user.username

    def test_a_nul_character_or_a_long_name_is_refused_naming_the_field(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)  # PostgreSQL refuses NUL in any text it stores
        h = bearer(auth.create_token(session=session, user=user).token)
        for name in ("c\x00i", "x" * 101):
            r = client.post("/api/v1/tokens", params={"name": name}, headers=h)
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.name", r.text
        assert len(auth.list_tokens(session=session, user=user)) == 1

    def test_an_admin_makes_one_for_someone_else(self, client: TestClient, session: Session) -> None:
        admin, bob = make_user(session, role=Role.admin), make_user(session)
        csrf = login(client, admin)
        r = client.post(f"/admin/users/{bob.id}/tokens", data={"csrf_token": csrf})
        assert r.status_code == 201
        match = TOKEN_RE.search(r.text)
        assert match
        me = client.get("/api/v1/me", headers=bearer(match.group(1))).json()
        assert (me["username"], me["role"]) == (bob.username, "labeler")


class TestBearer:
    def test_revoked_unknown_and_malformed_tokens_get_401(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        new = auth.create_token(session=session, user=user)
        assert client.get("/api/v1/me", headers=bearer(new.token)).status_code == 200
        r = client.delete(f"/api/v1/tokens/{new.row.id}", headers=bearer(new.token))
        assert r.status_code == 204
        r = client.get("/api/v1/me", headers=bearer(new.token))
        assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
        r = client.get("/api/v1/me", headers=bearer("rl_made-up"))
        assert r.status_code == 401
        r = client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "Bearer <token>" in r.json()["detail"]

    def test_revoking_from_the_page(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        new = auth.create_token(session=session, user=user)
        csrf = login(client, user)
        r = client.post(
            f"/account/tokens/{new.row.id}/revoke", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert r.status_code == 303
        assert "revoked" in client.get("/account/tokens").text
        assert client.get("/api/v1/me", headers=bearer(new.token)).status_code == 401

    def test_someone_elses_token_cannot_be_revoked(self, client: TestClient, session: Session) -> None:
        alice, bob = make_user(session), make_user(session)
        theirs = auth.create_token(session=session, user=bob)
        mine = auth.create_token(session=session, user=alice).token
        r = client.delete(f"/api/v1/tokens/{theirs.row.id}", headers=bearer(mine))
        assert r.status_code == 403
        assert client.delete("/api/v1/tokens/987654", headers=bearer(mine)).status_code == 404
        assert client.get("/api/v1/me", headers=bearer(theirs.token)).status_code == 200

    def test_a_token_acts_with_its_users_role(
        self, app: FastAPI, client: TestClient, session: Session
    ) -> None:
        add_probe_routes(app)
        expected = {
            Role.labeler: {"labeler": 200, "researcher": 403, "admin": 403},
            Role.researcher: {"labeler": 403, "researcher": 200, "admin": 403},
            Role.admin: {"labeler": 200, "researcher": 200, "admin": 200},
        }
        for role, outcomes in expected.items():
            raw = auth.create_token(session=session, user=make_user(session, role=role)).token
            for route, status in outcomes.items():
                r = client.get(f"/api/v1/_probe/{route}", headers=bearer(raw))
                assert r.status_code == status, (role, route)
                if status == 403:
                    assert f"needs the {route} role" in r.json()["detail"]
        labeler = auth.create_token(session=session, user=make_user(session)).token
        assert client.get("/admin/users", headers=bearer(labeler)).status_code == 403

    def test_a_deactivated_users_token_stops_working(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        raw = auth.create_token(session=session, user=user).token
        auth.update_user(session=session, user=user, is_active=False)
        assert client.get("/api/v1/me", headers=bearer(raw)).status_code == 401


class TestMeAndHealth:
    def test_me_answers_for_the_session(self, client: TestClient, session: Session) -> None:
        user = make_user(session, role=Role.researcher)
        login(client, user)
        assert client.get("/api/v1/me").json() == {
            "id": user.id,
            "username": user.username,
            "role": "researcher",
            "auth": "cookie",
        }

    def test_me_needs_someone(self, client: TestClient) -> None:
        r = client.get("/api/v1/me")
        assert r.status_code == 401 and r.json()["detail"] == "Please log in."

    def test_healthz_checks_the_database(self, client: TestClient, app: FastAPI) -> None:
        assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}

        from sqlalchemy.exc import OperationalError

        class Broken:
            def execute(self, *a: object, **k: object) -> None:
                raise OperationalError("SELECT 1", {}, Exception("connection refused"))

            def commit(self) -> None: ...
            def rollback(self) -> None: ...
            def close(self) -> None: ...
            def in_transaction(self) -> bool:  # the session dependency's end asks
                return True

        app.state.sessionmaker = Broken
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "error"

    def test_the_openapi_page_lists_the_api(self, client: TestClient) -> None:
        assert client.get("/api/v1/docs").status_code == 200
        paths = client.get("/api/v1/openapi.json").json()["paths"]
        assert "/api/v1/me" in paths and "/api/v1/tokens" in paths


def test_user_model_is_hashed_with_argon2(session: Session) -> None:
    user = make_user(session)
    stored = session.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None and stored.startswith("$argon2")
