from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import UserSession
from tests.factories import login, make_user


class TestLogin:
    def test_login_then_home_then_logout_ends_the_session(self, client: TestClient,
                                                          session: Session) -> None:
        user = make_user(session, role="admin")
        csrf = login(client, user)
        assert "Welcome, " + user.username in client.get("/").text
        old_cookie = client.cookies.get("ranklab_session")
        r = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert session.scalars(select(UserSession)).all() == []
        # The old cookie, replayed, no longer works.
        client.cookies.set("ranklab_session", old_cookie)
        assert client.get("/", follow_redirects=False).status_code == 303

    def test_wrong_password_is_refused(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        client.get("/login")
        r = client.post("/login", data={"username": user.username, "password": "nope-nope",
                                        "csrf_token": client.cookies["ranklab_csrf"]})
        assert r.status_code == 401
        assert "Wrong username or password" in r.text
