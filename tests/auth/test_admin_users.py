"""User management under /admin/users: create, change role, deactivate; never yourself."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.models import Role, User, UserSession
from tests.factories import PASSWORD, bearer, login, make_user


def other_client(client: TestClient) -> TestClient:
    return TestClient(client.app, base_url="http://testserver")


def n_users(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)


class TestUsersPage:
    def test_admin_sees_every_user(self, client: TestClient, session: Session) -> None:
        admin, bob = make_user(session, role=Role.admin), make_user(session)
        login(client, admin)
        page = client.get("/admin/users").text
        assert admin.username in page and bob.username in page

    def test_other_roles_are_refused(self, client: TestClient, session: Session) -> None:
        for role in (Role.labeler, Role.researcher):
            with other_client(client) as c:
                login(c, make_user(session, role=role))
                r = c.get("/admin/users")
                assert r.status_code == 403 and "needs the admin role" in r.text

    def test_create_a_user_who_can_then_log_in(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role=Role.admin))
        r = client.post(
            "/admin/users",
            follow_redirects=False,
            data={
                "username": "newbie",
                "password": "new-password-1",
                "role": "researcher",
                "csrf_token": csrf,
            },
        )
        assert r.status_code == 303
        user = auth.get_user(session=session, username="newbie")
        assert user is not None and user.role == "researcher"
        with other_client(client) as c:
            login(c, user, password="new-password-1")
            assert c.get("/api/v1/me").json()["role"] == "researcher"

    def test_bad_input_is_refused_with_the_field_and_nothing_is_stored(
        self, client: TestClient, session: Session
    ) -> None:
        admin = make_user(session, role=Role.admin)
        csrf = login(client, admin)
        before = n_users(session)
        for data, message in (
            ({"username": "bad name", "password": PASSWORD, "role": "labeler"}, "username:"),
            ({"username": "okname", "password": "short", "role": "labeler"}, "password:"),
            ({"username": "okname", "password": PASSWORD, "role": "boss"}, "role:"),
            ({"username": admin.username, "password": PASSWORD, "role": "labeler"}, "is taken"),
        ):
            r = client.post("/admin/users", data={**data, "csrf_token": csrf})
            assert r.status_code == 422 and message in r.text, data
        assert n_users(session) == before


class TestChangeUser:
    def test_change_role_takes_effect_at_once(self, client: TestClient, session: Session) -> None:
        admin, bob = make_user(session, role=Role.admin), make_user(session)
        raw = auth.create_token(session=session, user=bob).token
        assert client.get("/admin/users", headers=bearer(raw)).status_code == 403
        csrf = login(client, admin)
        r = client.post(
            f"/admin/users/{bob.id}", data={"role": "admin", "csrf_token": csrf}, follow_redirects=False
        )
        assert r.status_code == 303
        session.refresh(bob)
        assert bob.role == "admin"
        assert client.get("/admin/users", headers=bearer(raw)).status_code == 200

    def test_deactivate_ends_sessions_and_tokens_then_reactivate(
        self, client: TestClient, session: Session
    ) -> None:
        admin, bob = make_user(session, role=Role.admin), make_user(session)
        raw = auth.create_token(session=session, user=bob).token
        with other_client(client) as bob_client:
            login(bob_client, bob)
            assert bob_client.get("/api/v1/me").status_code == 200
            csrf = login(client, admin)
            r = client.post(
                f"/admin/users/{bob.id}", data={"active": "false", "csrf_token": csrf}, follow_redirects=False
            )
            assert r.status_code == 303
            assert (
                session.scalar(
                    select(func.count()).select_from(UserSession).where(UserSession.user_id == bob.id)
                )
                == 0
            )
            assert bob_client.get("/api/v1/me").status_code == 401
            assert client.get("/api/v1/me", headers=bearer(raw)).status_code == 401
            assert "deactivated" in client.get("/admin/users").text
            client.post(f"/admin/users/{bob.id}", data={"active": "true", "csrf_token": csrf})
            assert client.get("/api/v1/me", headers=bearer(raw)).status_code == 200

    def test_cannot_demote_or_deactivate_yourself(self, client: TestClient, session: Session) -> None:
        admin = make_user(session, role=Role.admin)
        csrf = login(client, admin)
        for data in ({"role": "labeler"}, {"active": "false"}):
            r = client.post(f"/admin/users/{admin.id}", data={**data, "csrf_token": csrf})
            assert r.status_code == 422 and "cannot demote or deactivate yourself" in r.text
        session.refresh(admin)
        assert (admin.role, admin.is_active) == ("admin", True)
        assert client.get("/api/v1/me").status_code == 200

    def test_a_bad_role_or_unknown_user(self, client: TestClient, session: Session) -> None:
        admin, bob = make_user(session, role=Role.admin), make_user(session)
        csrf = login(client, admin)
        r = client.post(f"/admin/users/{bob.id}", data={"role": "boss", "csrf_token": csrf})
        assert r.status_code == 422 and "role:" in r.text
        session.refresh(bob)
        assert bob.role == "labeler"
        r = client.post("/admin/users/987654", data={"role": "admin", "csrf_token": csrf})
        assert r.status_code == 404

    def test_an_active_value_other_than_true_or_false_is_refused(
        self, client: TestClient, session: Session
    ) -> None:
        admin, bob = make_user(session, role=Role.admin), make_user(session)
        csrf = login(client, admin)
        r = client.post(f"/admin/users/{bob.id}", data={"active": "yes", "csrf_token": csrf})
        assert r.status_code == 422 and "active:" in r.text
        session.refresh(bob)
        assert bob.is_active
