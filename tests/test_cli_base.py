"""The `ranklab` command: db upgrade, users, tokens, and help that teaches by example."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from app.auth import security
from app.auth import service as auth
from app.auth.models import ApiToken, User
from app.cli import cli
from app.config import get_settings
from app.db import get_engine


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the services under these commands are tested on both databases."""
    return sqlite_url


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("RANKLAB_ADMIN_USERNAME", "RANKLAB_ADMIN_PASSWORD", "RANKLAB_ENV"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def db(committed: sessionmaker[Session], db_url: str, env: pytest.MonkeyPatch) -> sessionmaker[Session]:
    """The CLI pointed at the test database, with real commits."""
    env.setenv("RANKLAB_DATABASE_URL", db_url)
    get_settings.cache_clear()
    return committed


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, prog_name="ranklab")


def create_user(username: str, role: str, password: str) -> Result:
    """`ranklab users create`, the password on stdin."""
    return run(
        "users", "create", "--username", username, "--role", role, "--password-stdin", input=f"{password}\n"
    )


def count_users(db: sessionmaker[Session]) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(User)) or 0)


class TestDbUpgrade:
    def test_upgrade_makes_the_schema_and_is_safe_to_repeat(
        self, tmp_path: Path, env: pytest.MonkeyPatch
    ) -> None:
        url = f"sqlite:///{tmp_path / 'new.db'}"
        env.setenv("RANKLAB_DATABASE_URL", url)
        for _ in range(2):
            result = run("db", "upgrade")
            assert result.exit_code == 0, result.output
            assert "database is up to date" in result.output
        assert {"user", "job", "annotation"} <= set(inspect(get_engine(url)).get_table_names())


class TestUsersCreate:
    def test_password_from_stdin(self, db: sessionmaker[Session]) -> None:
        result = create_user("bob", "labeler", "a long password")
        assert result.exit_code == 0, result.output
        assert "created labeler 'bob'" in result.output
        with db() as s:
            user = auth.get_user(session=s, username="bob")
            assert user is not None and user.role == "labeler"
            assert user.password_hash.startswith("$argon2")
            assert security.verify_password(user.password_hash, "a long password")

    def test_password_from_the_prompt_asked_twice(self, db: sessionmaker[Session]) -> None:
        result = run(
            "users",
            "create",
            "--username",
            "carol",
            "--role",
            "researcher",
            input="prompted-pw\nprompted-pw\n",
        )
        assert result.exit_code == 0, result.output
        assert "Repeat for confirmation" in result.output
        with db() as s:
            user = auth.get_user(session=s, username="carol")
            assert user is not None and security.verify_password(user.password_hash, "prompted-pw")

    @pytest.mark.parametrize(
        ("args", "stdin", "code", "message"),
        [
            (
                ["--username", "dave", "--role", "boss"],
                "a long password\n",
                2,
                "'boss' is not one of 'labeler', 'researcher', 'admin'",
            ),
            (
                ["--username", "no spaces", "--role", "labeler"],
                "a long password\n",
                2,
                "Invalid value for '--username'",
            ),
            (["--username", "erin", "--role", "labeler"], "short\n", 1, "password: at least 8"),
            (["--username", "erin", "--role", "labeler"], "\n", 1, "password: at least 8"),
        ],
    )
    def test_bad_input_is_refused_and_nothing_is_written(
        self, db: sessionmaker[Session], args: list[str], stdin: str, code: int, message: str
    ) -> None:
        result = run("users", "create", *args, "--password-stdin", input=stdin)
        assert result.exit_code == code
        assert message in result.output
        assert count_users(db) == 0

    def test_a_bad_username_is_refused_before_asking_for_a_password(self, db: sessionmaker[Session]) -> None:
        result = run("users", "create", "--username", "x", "--role", "labeler", input="")
        assert result.exit_code == 2 and "Password" not in result.output

    def test_a_taken_username_is_refused(self, db: sessionmaker[Session]) -> None:
        assert create_user("bob", "admin", "a long password").exit_code == 0
        result = create_user("bob", "labeler", "another password")
        assert result.exit_code == 1 and "'bob' is taken" in result.output
        with db() as s:
            assert auth.get_user(session=s, username="bob").role == "admin"  # type: ignore[union-attr]

    def test_list_shows_every_account(self, db: sessionmaker[Session]) -> None:
        for name, role in (("ann", "labeler"), ("rex", "researcher")):
            create_user(name, role, "a long password")
        lines = run("users", "list").output.splitlines()
        assert lines[0].split() == ["id", "username", "role", "status"]
        assert [line.split()[1:] for line in lines[1:]] == [
            ["ann", "labeler", "active"],
            ["rex", "researcher", "active"],
        ]


class TestEnsureAdmin:
    def test_prints_a_random_password_once_then_creates_nothing(self, db: sessionmaker[Session]) -> None:
        first = run("users", "ensure-admin")
        assert first.exit_code == 0, first.output
        password = first.output.split("with password: ")[1].split()[0]
        with db() as s:
            admin = auth.get_user(session=s, username="admin")
            assert admin is not None and admin.role == "admin"
            assert auth.authenticate(session=s, username="admin", password=password, ip=None)
        second = run("users", "ensure-admin")
        assert second.exit_code == 0 and "an admin account exists" in second.output
        assert password not in second.output
        assert count_users(db) == 1

    def test_takes_the_login_from_env_vars(self, db: sessionmaker[Session], env: pytest.MonkeyPatch) -> None:
        env.setenv("RANKLAB_ADMIN_USERNAME", "root")
        env.setenv("RANKLAB_ADMIN_PASSWORD", "from-the-env-123")
        get_settings.cache_clear()
        result = run("users", "ensure-admin")
        assert result.exit_code == 0 and "from-the-env-123" not in result.output
        with db() as s:
            assert auth.authenticate(session=s, username="root", password="from-the-env-123", ip=None)


class TestTokensCreate:
    def test_prints_a_working_token_stored_hashed(self, db: sessionmaker[Session]) -> None:
        create_user("bob", "labeler", "a long password")
        result = run("tokens", "create", "--username", "bob", "--name", "script")
        assert result.exit_code == 0, result.output
        token = result.output.strip()
        assert token.startswith("rl_")
        with db() as s:
            assert auth.user_for_api_token(session=s, token=token).username == "bob"  # type: ignore[union-attr]
            row = s.scalar(select(ApiToken))
            assert row is not None and row.name == "script" and row.token_hash != token

    def test_unknown_user(self, db: sessionmaker[Session]) -> None:
        result = run("tokens", "create", "--username", "ghost")
        assert result.exit_code == 1 and "no user 'ghost'" in result.output


class TestHelp:
    @pytest.mark.parametrize(
        "command",
        [
            [],
            ["db"],
            ["db", "upgrade"],
            ["db", "downgrade"],
            ["users"],
            ["users", "create"],
            ["users", "list"],
            ["users", "ensure-admin"],
            ["users", "set-password"],
            ["tokens"],
            ["tokens", "create"],
            ["serve"],
            ["worker"],
        ],
    )
    def test_help_teaches_with_examples(self, command: list[str]) -> None:
        result = run(*command, "--help")
        assert result.exit_code == 0
        assert "ranklab " + " ".join(command) in result.output.split("Usage:", 1)[1].splitlines()[0]
        assert "Example" in result.output or "ranklab db upgrade" in result.output
        # The example lines are real invocations of this command.
        examples = [
            line.strip()
            for line in result.output.splitlines()
            if line.strip().startswith(("ranklab ", "echo ", "TOKEN=", "RANKLAB_"))
        ]
        assert any(("ranklab " + " ".join(command)).strip() in line for line in examples), examples


class TestSetPassword:
    def test_sets_the_password_and_ends_sessions(self, db: sessionmaker[Session]) -> None:
        from app.auth.models import UserSession

        create_user("bob", "labeler", "old password")
        with db.begin() as s:
            user = auth.get_user(session=s, username="bob")
            assert user is not None
            auth.start_session(session=s, user=user, hours=1)
        result = run("users", "set-password", "--username", "bob", input="new password\nnew password\n")
        assert result.exit_code == 0, result.output
        with db() as s:
            user = auth.get_user(session=s, username="bob")
            assert user is not None and security.verify_password(user.password_hash, "new password")
            assert s.scalar(select(func.count()).select_from(UserSession)) == 0

    def test_refuses_unknown_users_and_short_passwords(self, db: sessionmaker[Session]) -> None:
        assert (
            run(
                "users", "set-password", "--username", "ghost", "--password-stdin", input="whatever-long\n"
            ).exit_code
            == 1
        )
        create_user("bob", "labeler", "old password")
        result = run("users", "set-password", "--username", "bob", "--password-stdin", input="x\n")
        assert result.exit_code == 1 and "password: at least 8" in result.output
        with db() as s:
            user = auth.get_user(session=s, username="bob")
            assert user is not None and security.verify_password(user.password_hash, "old password")
