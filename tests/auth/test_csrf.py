"""Every state-changing request from a browser session needs its CSRF token: as the form field
`csrf_token` or, for htmx, the X-CSRF-Token header. Without it: 403, a message, nothing done."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.models import ApiToken, User, UserSession
from tests.factories import PASSWORD, bearer, login, make_user

BAD_TOKENS = [None, "", "forged-token"]


def snapshot(session: Session) -> tuple[object, ...]:
    session.expire_all()
    return (
        session.scalar(select(func.count()).select_from(User)),
        session.scalar(select(func.count()).select_from(UserSession)),
        session.scalar(select(func.count()).select_from(ApiToken)),
        session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_(None))),
        tuple(session.execute(select(User.id, User.role, User.is_active).order_by(User.id)).all()),
    )


def forms(admin: User, other: User, token: ApiToken) -> list[tuple[str, dict[str, str]]]:
    return [
        ("/logout", {}),
        ("/account/tokens", {"name": "sneaky"}),
        (f"/account/tokens/{token.id}/revoke", {}),
        ("/admin/users", {"username": "mallory", "password": PASSWORD, "role": "admin"}),
        (f"/admin/users/{other.id}", {"role": "admin"}),
        (f"/admin/users/{other.id}", {"active": "false"}),
        (f"/admin/users/{other.id}/tokens", {}),
    ]


class TestCsrf:
    @pytest.mark.parametrize("bad", BAD_TOKENS)
    def test_every_auth_form_refuses_a_missing_or_wrong_token(
        self, client: TestClient, session: Session, bad: str | None
    ) -> None:
        admin, other = make_user(session, role="admin"), make_user(session)
        token = auth.create_token(session=session, user=admin).row
        login(client, admin)
        before = snapshot(session)
        for path, data in forms(admin, other, token):
            if bad is not None:
                data = {**data, "csrf_token": bad}
            r = client.post(path, data=data, follow_redirects=False)
            assert r.status_code == 403, path
            assert "CSRF token" in r.text, path
        assert snapshot(session) == before
        assert client.get("/api/v1/me").json()["username"] == admin.username  # still logged in

    def test_a_wrong_htmx_header_is_refused_even_with_a_right_form_field(
        self, client: TestClient, session: Session
    ) -> None:
        admin, other = make_user(session, role="admin"), make_user(session)
        csrf = login(client, admin)
        before = snapshot(session)
        r = client.post(
            f"/admin/users/{other.id}",
            data={"active": "false", "csrf_token": csrf},
            headers={"HX-Request": "true", "X-CSRF-Token": "forged"},
        )
        assert r.status_code == 403 and "CSRF" in r.text
        assert snapshot(session) == before

    def test_the_htmx_header_alone_is_enough(self, client: TestClient, session: Session) -> None:
        admin, other = make_user(session, role="admin"), make_user(session)
        csrf = login(client, admin)
        r = client.post(
            f"/admin/users/{other.id}",
            data={"active": "false"},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
            follow_redirects=False,
        )
        assert r.status_code == 303
        session.refresh(other)
        assert not other.is_active

    def test_json_api_with_a_cookie_needs_the_header(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        csrf = login(client, user)
        r = client.post("/api/v1/tokens")
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        assert client.post("/api/v1/tokens", headers={"X-CSRF-Token": csrf}).status_code == 201

    def test_bearer_requests_need_no_csrf_token(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        raw = auth.create_token(session=session, user=user).token
        assert client.post("/api/v1/tokens", headers=bearer(raw)).status_code == 201

    def test_the_login_form_needs_its_own_token(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        client.get("/login")
        for bad in BAD_TOKENS:
            data = {"username": user.username, "password": PASSWORD}
            if bad is not None:
                data["csrf_token"] = bad
            r = client.post("/login", data=data, follow_redirects=False)
            assert r.status_code == 403 and "CSRF token" in r.text
        assert snapshot(session)[1] == 0

    def test_pages_carry_the_token_for_forms_and_htmx(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session))
        page = client.get("/account/tokens").text
        assert f'name="csrf_token" value="{csrf}"' in page
        assert f'"X-CSRF-Token": "{csrf}"' in page
