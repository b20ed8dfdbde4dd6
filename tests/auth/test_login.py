"""Logins, logouts, sessions that end, and slowing down guessers."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.models import LoginFailure, User, UserSession
from app.db import utcnow
from tests.factories import PASSWORD, login, make_user


def post_login(client: TestClient, username: str, password: str, **extra: str):  # type: ignore[no-untyped-def]
    client.get("/login")
    return client.post(
        "/login",
        follow_redirects=False,
        data={
            "username": username,
            "password": password,
            "csrf_token": client.cookies.get("ranklab_csrf", ""),
            **extra,
        },
    )


def n_sessions(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(UserSession)) or 0)


class TestLogin:
    def test_login_then_home_then_logout_ends_the_session(self, client: TestClient, session: Session) -> None:
        user = make_user(session, role="admin")
        csrf = login(client, user)
        assert "Welcome, " + user.username in client.get("/").text
        old_cookie = client.cookies.get("ranklab_session")
        r = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert n_sessions(session) == 0
        # The old cookie, replayed, no longer works.
        client.cookies.set("ranklab_session", old_cookie)
        r = client.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert client.get("/api/v1/me").status_code == 401

    def test_login_records_the_time_and_goes_to_next(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        r = post_login(client, user.username, PASSWORD, next="/account/tokens")
        assert r.status_code == 303 and r.headers["location"] == "/account/tokens"
        session.refresh(user)
        assert user.last_login_at is not None

    def test_next_never_leaves_the_site(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        r = post_login(client, user.username, PASSWORD, next="//evil.example/x")
        assert r.headers["location"] == "/"

    def test_next_with_a_backslash_or_control_character_never_leaves_the_site(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        for target in ("/\\evil.example/x", "/\t/evil.example/x", "/\n/evil.example"):
            r = post_login(client, user.username, PASSWORD, next=target)
            assert r.status_code == 303 and r.headers["location"] == "/", target
            client.cookies.clear()
        login(client, user)  # logged in: the login page sends on, and just as safely
        r = client.get("/login", params={"next": "/\\evil.example"}, follow_redirects=False)
        assert r.headers["location"] == "/"

    def test_a_nul_character_in_the_username_is_a_wrong_login_not_a_crash(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)  # PostgreSQL refuses NUL in any text it is sent
        r = post_login(client, user.username + "\x00", PASSWORD)
        assert r.status_code == 401 and "Wrong username or password." in r.text

    def test_wrong_password_is_refused(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        r = post_login(client, user.username, "nope-nope")
        assert r.status_code == 401
        assert "Wrong username or password" in r.text
        assert "ranklab_session" not in client.cookies and n_sessions(session) == 0

    def test_unknown_user_gets_the_same_answer(self, client: TestClient, session: Session) -> None:
        r = post_login(client, "nobody-here", PASSWORD)
        assert r.status_code == 401 and "Wrong username or password" in r.text
        assert n_sessions(session) == 0

    def test_deactivated_user_is_told_so(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        auth.update_user(session=session, user=user, is_active=False)
        r = post_login(client, user.username, PASSWORD)
        assert r.status_code == 401 and "deactivated" in r.text
        assert n_sessions(session) == 0

    def test_the_system_account_can_never_log_in(self, client: TestClient, session: Session) -> None:
        user = make_user(session)
        user.is_system = True
        session.flush()
        assert post_login(client, user.username, PASSWORD).status_code == 401

    def test_a_logged_in_user_skips_the_login_page(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session))
        r = client.get("/login?next=/account/tokens", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/account/tokens"


class TestExpiredSession:
    def _expire(self, session: Session) -> None:
        session.execute(update(UserSession).values(expires_at=utcnow() - timedelta(minutes=1)))
        session.expire_all()

    def test_pages_redirect_to_login_and_the_api_answers_401(
        self, client: TestClient, session: Session
    ) -> None:
        login(client, make_user(session))
        self._expire(session)
        r = client.get("/account/tokens", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/account/tokens"
        r = client.get("/api/v1/me")
        assert r.status_code == 401 and "session has ended" in r.json()["detail"]
        r = client.get("/account/tokens", headers={"HX-Request": "true"})
        assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/login")

    def test_the_login_page_still_shows_with_a_stale_cookie(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        login(client, user)
        self._expire(session)
        r = client.get("/login", follow_redirects=False)
        assert r.status_code == 200 and "Log in to ranklab" in r.text
        assert post_login(client, user.username, PASSWORD).status_code == 303

    def test_activity_slides_the_expiry(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session))
        soon = utcnow() + timedelta(minutes=5)
        session.execute(update(UserSession).values(expires_at=soon))
        client.get("/")
        row = session.scalar(select(UserSession).execution_options(populate_existing=True))
        assert row is not None and row.expires_at > soon + timedelta(hours=1)


class TestThrottling:
    def test_five_failures_then_429_even_with_the_right_password_until_the_wait(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        for _ in range(5):
            assert post_login(client, user.username, "wrong-guess").status_code == 401
        r = post_login(client, user.username, PASSWORD)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert "Too many failed logins" in r.text
        assert n_sessions(session) == 0
        # The wait passes (failures moved back in time): the right password works again,
        # and the slate is wiped.
        session.execute(update(LoginFailure).values(at=utcnow() - timedelta(minutes=1)))
        r = post_login(client, user.username, PASSWORD)
        assert r.status_code == 303
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 0

    def test_each_further_failure_doubles_the_wait(self, session: Session) -> None:
        now = utcnow()
        session.add_all(LoginFailure(username="victim", at=now) for _ in range(7))
        session.flush()
        try:
            auth.authenticate(session=session, username="victim", password="x", ip=None)
        except auth.Throttled as exc:
            assert 5 <= exc.retry_after <= 8  # 2 ** (7 - 5 + 1)
        else:
            raise AssertionError("not throttled")

    def test_guessing_one_account_does_not_lock_another(self, client: TestClient, session: Session) -> None:
        victim, other = make_user(session), make_user(session)
        for _ in range(6):
            post_login(client, victim.username, "wrong-guess")
        assert post_login(client, other.username, PASSWORD).status_code == 303
        assert session.scalar(select(User.last_login_at).where(User.id == other.id)) is not None


def test_empty_fields_are_asked_for_again(client: TestClient, session: Session) -> None:
    r = post_login(client, "  ", "")
    assert r.status_code == 422 and "Enter your username and password" in r.text
    assert n_sessions(session) == 0


def test_the_cookie_outlives_the_sliding_server_expiry(client: TestClient, session: Session) -> None:
    user = make_user(session)
    r = post_login(client, user.username, PASSWORD)
    assert "Max-Age=2592000" in r.headers["set-cookie"]  # the server decides when it ends


def test_the_dummy_hash_is_made_on_first_use_not_at_import() -> None:
    """An unknown user costs a password check like a known one, but importing the app must not
    pay for it (about a second of argon2)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from app.auth import security as s; assert s._DUMMY_HASH is None; "
        "assert not s.verify_password(None, 'x'); assert s._DUMMY_HASH.startswith('$argon2')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
