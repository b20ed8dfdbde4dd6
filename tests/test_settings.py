"""Settings: RANKLAB_* variables; production refuses to start without a real secret key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app.config import DEFAULT_SECRET_KEY, Settings, SettingsError, get_settings
from app.main import create_app
from tests.factories import PASSWORD, make_user

GOOD_SECRET = "k" * 48
HOW_TO = "secrets.token_urlsafe"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("RANKLAB_ENV", "RANKLAB_SECRET_KEY", "RANKLAB_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")  # no stray .env file
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class TestDefaults:
    def test_development_defaults_run_on_sqlite(self) -> None:
        s = Settings()
        assert s.env == "development" and s.is_sqlite and not s.secure_cookies
        assert s.secret_key == DEFAULT_SECRET_KEY and s.job_max_attempts == 3

    def test_env_vars_are_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RANKLAB_DATABASE_URL", "postgresql+psycopg://u@db/ranklab")
        monkeypatch.setenv("RANKLAB_JOB_STALE_SECONDS", "7")
        s = Settings()
        assert not s.is_sqlite and s.job_stale_seconds == 7.0

    def test_a_bad_value_names_the_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RANKLAB_JOB_MAX_ATTEMPTS", "many")
        with pytest.raises(SettingsError, match="RANKLAB_JOB_MAX_ATTEMPTS"):
            get_settings()

    @pytest.mark.parametrize(
        ("var", "value"),
        [
            ("RANKLAB_JOB_STALE_SECONDS", "0"),
            ("RANKLAB_JOB_MAX_ATTEMPTS", "0"),
            ("RANKLAB_SESSION_HOURS", "-1"),
            ("RANKLAB_MAX_UPLOAD_MB", "0"),
            ("RANKLAB_MAX_PROMPT_TOKENS", "0"),
            ("RANKLAB_LEASE_MINUTES", "0"),
            ("RANKLAB_OPENAI_CONCURRENCY", "0"),
            ("RANKLAB_OPENAI_TIMEOUT_SECONDS", "0"),
            ("RANKLAB_OPENAI_RETRIES", "-1"),
        ],
    )
    def test_a_zero_or_negative_amount_is_refused_by_name(
        self, var: str, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A stale limit of 0 requeues every running job at once; 0 attempts fail every job.
        monkeypatch.setenv(var, value)
        with pytest.raises(SettingsError, match=var):
            get_settings()


class TestProductionSecret:
    @pytest.mark.parametrize("secret", [None, DEFAULT_SECRET_KEY, "short-secret", ""])
    def test_refused_with_the_how_to(self, monkeypatch: pytest.MonkeyPatch, secret: str | None) -> None:
        monkeypatch.setenv("RANKLAB_ENV", "production")
        if secret is not None:
            monkeypatch.setenv("RANKLAB_SECRET_KEY", secret)
        with pytest.raises(ValidationError, match="RANKLAB_SECRET_KEY") as info:
            Settings()
        assert HOW_TO in str(info.value)
        with pytest.raises(SettingsError) as exited:
            get_settings()
        assert "refuses to start" in str(exited.value.code) and HOW_TO in str(exited.value.code)

    def test_create_app_refuses(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RANKLAB_ENV", "production")
        with pytest.raises(SettingsError, match="RANKLAB_SECRET_KEY"):
            create_app()

    def test_serve_exits_1_before_starting_anything(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import subprocess

        import uvicorn

        from app.cli import cli

        monkeypatch.setenv("RANKLAB_ENV", "production")
        monkeypatch.setenv("RANKLAB_SECRET_KEY", DEFAULT_SECRET_KEY)
        started: list[str] = []
        monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append("worker"))
        monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append("server"))
        result = CliRunner().invoke(cli, ["serve", "--no-worker"])
        assert result.exit_code == 1
        assert "RANKLAB_SECRET_KEY" in result.output and HOW_TO in result.output
        assert started == []

    def test_a_long_random_secret_starts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RANKLAB_ENV", "production")
        monkeypatch.setenv("RANKLAB_SECRET_KEY", GOOD_SECRET)
        assert get_settings().secure_cookies


class TestCookies:
    def test_production_cookies_are_secure_httponly_samesite(
        self, db_url: str, sessions: sessionmaker[Session], session: Session
    ) -> None:
        app = create_app(Settings(env="production", secret_key=GOOD_SECRET, database_url=db_url))
        app.state.sessionmaker = sessions
        user = make_user(session)
        session.commit()
        with TestClient(app, base_url="https://testserver") as client:
            anon = client.get("/login").headers["set-cookie"]
            r = client.post(
                "/login",
                follow_redirects=False,
                data={
                    "username": user.username,
                    "password": PASSWORD,
                    "csrf_token": client.cookies["ranklab_csrf"],
                },
            )
        assert r.status_code == 303
        for header in (anon, r.headers["set-cookie"]):
            assert "Secure" in header and "HttpOnly" in header and "SameSite=lax" in header
        assert "ranklab_session=" in r.headers["set-cookie"]

    def test_development_cookies_are_not_secure(self, client: TestClient) -> None:
        header = client.get("/login").headers["set-cookie"]
        assert "HttpOnly" in header and "Secure" not in header


class TestDocumented:
    def test_every_setting_is_in_the_docs_and_env_example(self) -> None:
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        docs = (root / "docs" / "foundation.md").read_text()
        example = (root / ".env.example").read_text()
        for name in Settings.model_fields:
            var = f"RANKLAB_{name.upper()}"
            assert f"| `{var}` |" in docs, f"add {var} to the table in docs/foundation.md"
            assert f"{var}=" in example, f"add {var} to .env.example"
