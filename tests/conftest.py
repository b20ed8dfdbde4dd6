"""Test databases: every test that asks for `db_url` runs on SQLite and on the real PostgreSQL.

Each test session makes its own databases (so parallel runs never collide) with
`alembic upgrade heads` — never create_all — and drops them at the end. `session` and
`client` run inside a transaction rolled back after the test; `committed` gives real commits
(for concurrency tests) and empties the tables afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import app.all_models  # noqa: F401  (fills Base.metadata)
from app import migrate
from app.config import Settings, get_settings
from app.db import Base, get_engine, make_sessionmaker
from app.main import create_app


@pytest.fixture(autouse=True)
def _cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its real cost takes ~0.5 s a hash on a busy 2-core machine; tests of the
    hashing itself read the parameters from the stored hash, so cheap ones prove the same."""
    from argon2 import PasswordHasher

    from app.auth import security

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(security, "_hasher", cheap)
    monkeypatch.setattr(security, "_DUMMY_HASH", cheap.hash("not-a-real-password"))


PG_ADMIN_URL = os.environ.get(
    "RANKLAB_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def pg_available() -> bool:
    try:
        with create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001
        return False


def _need_pg() -> None:
    if not pg_available():
        if ON_CI:
            pytest.fail(f"PostgreSQL is required on CI and is not reachable at {PG_ADMIN_URL}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    migrate.upgrade(url)
    return url


@contextmanager
def new_pg_database(prefix: str) -> Iterator[str]:
    """The URL of a PostgreSQL database of its own, empty, dropped on the way out."""
    _need_pg()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with new_pg_database("ranklab_test") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def pg_only_url(pg_url: str) -> str:
    """For tests of PostgreSQL-only guarantees (SKIP LOCKED under concurrency)."""
    return pg_url


@pytest.fixture
def connection(db_url: str) -> Iterator:
    conn = get_engine(db_url).connect()
    trans = conn.begin()
    yield conn
    trans.rollback()
    conn.close()


@pytest.fixture
def sessions(connection) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    """Sessions inside the test's transaction: their commits are savepoints, undone at the end."""
    return sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as s:
        yield s


def make_settings(url: str, **overrides: object) -> Settings:
    # Tests change sessions and tokens behind the app's back; the login cache has its own tests.
    overrides.setdefault("auth_cache_seconds", 0)
    return Settings(
        database_url=url,
        env="test",
        artifacts_dir=overrides.pop(  # type: ignore[arg-type]
            "artifacts_dir", Path("var/test-artifacts")
        ),
        **overrides,
    )


@pytest.fixture
def app(db_url: str, sessions: sessionmaker[Session], tmp_path: Path):  # type: ignore[no-untyped-def]
    application = create_app(make_settings(db_url, artifacts_dir=tmp_path / "artifacts"))
    application.state.sessionmaker = sessions
    return application


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def _empty_all_tables(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


def _committed_on(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the database at `url`, every table emptied before and after."""
    _empty_all_tables(url)
    yield make_sessionmaker(url)
    _empty_all_tables(url)


@pytest.fixture
def committed(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Real commits on the test database, visible to other connections; emptied afterwards."""
    yield from _committed_on(db_url)


@pytest.fixture
def committed_sqlite(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    """Real commits on SQLite only, for tests whose point is not the database."""
    yield from _committed_on(sqlite_url)


@pytest.fixture
def committed_pg(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """Real commits on PostgreSQL only."""
    yield from _committed_on(pg_url)


@pytest.fixture
def cli_db(
    committed: sessionmaker[Session], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[sessionmaker[Session]]:
    """The `ranklab` command pointed at the test database (real commits) and a private artifacts
    folder; a developer's own RANKLAB_POLICY_MODEL left out."""
    monkeypatch.setenv("RANKLAB_DATABASE_URL", db_url)
    monkeypatch.setenv("RANKLAB_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("RANKLAB_POLICY_MODEL", raising=False)
    get_settings.cache_clear()
    yield committed
    get_settings.cache_clear()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_chat_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama chat model (ChatML template, random weights), built once per session."""
    from trainer.models.tiny import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("chat") / "tiny-chat")
