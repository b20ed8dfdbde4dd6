"""Alembic makes the schema: up, down to base, and up again, on SQLite and PostgreSQL; the
result matches the ORM models; SQLite runs with foreign keys on and WAL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError

import app.all_models  # noqa: F401
from app import migrate
from app.db import Base, get_engine
from tests.conftest import new_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own: the round trip drops everything, which the shared ones
    other tests use must not see."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with new_pg_database("ranklab_mig") as url:
        yield url


def _tables(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names()) - {"alembic_version"}


def _drift(url: str) -> list[object]:
    with get_engine(url).connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


class TestRoundTrip:
    def test_up_down_up_matches_the_models(self, fresh_url: str) -> None:
        expected = set(Base.metadata.tables)
        migrate.upgrade(fresh_url)
        assert _tables(fresh_url) == expected
        assert _drift(fresh_url) == []  # the migrations make exactly what the models say
        migrate.downgrade(fresh_url, "base")
        assert _tables(fresh_url) == set()
        migrate.upgrade(fresh_url)
        assert _tables(fresh_url) == expected
        with get_engine(fresh_url).connect() as conn:
            heads = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
        assert heads and all(heads)

    def test_upgrade_twice_is_a_no_op(self, fresh_url: str) -> None:
        migrate.upgrade(fresh_url)
        migrate.upgrade(fresh_url)
        assert _tables(fresh_url) == set(Base.metadata.tables)


def _insert_old_set(conn: Connection) -> None:
    """A prompt set as the revisions before 0004 stored it (no kind), in raw SQL."""
    conn.execute(
        text(
            "INSERT INTO prompt_set (name, k, overlap, sampling, flags, status, report, "
            "created_at) VALUES ('s', 4, 1, '{}', '[]', 'active', '{}', CURRENT_TIMESTAMP)"
        )
    )


class TestSQLite:
    def test_foreign_keys_on_and_wal(self, sqlite_url: str) -> None:
        with get_engine(sqlite_url).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"

    def test_a_dangling_foreign_key_is_refused(self, sqlite_url: str) -> None:
        with get_engine(sqlite_url).connect() as conn, pytest.raises(IntegrityError):
            conn.execute(
                text(
                    "INSERT INTO api_token (user_id, name, token_hash, prefix, created_at) "
                    "VALUES (987654, 'x', 'h', 'p', '2026-01-01')"
                )
            )


class TestPromptMessages:
    """0002 turns every stored prompt into its one-user-message conversation, and back."""

    def test_rows_survive_up_and_down(self, fresh_url: str) -> None:
        from app.chat import conversation_hash

        migrate.upgrade(fresh_url, "0001")
        engine = get_engine(fresh_url)
        with engine.begin() as conn:
            _insert_old_set(conn)
            set_id = conn.execute(text("SELECT id FROM prompt_set")).scalar_one()
            for i, body in enumerate(["Explain tides.", "Name a colour\r\nplease."]):
                conn.execute(
                    text(
                        "INSERT INTO prompt (prompt_set_id, text, text_hash, meta, source_line, created_at) "
                        "VALUES (:s, :t, :h, '{}', :l, CURRENT_TIMESTAMP)"
                    ),
                    {"s": set_id, "t": body, "h": f"old{i}", "l": i + 1},
                )
        migrate.upgrade(fresh_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT text, messages, text_hash FROM prompt ORDER BY id")).all()
        import json

        got = [(t, json.loads(m) if isinstance(m, str) else m, h) for t, m, h in rows]
        assert got[0] == (
            "Explain tides.",
            [{"role": "user", "content": "Explain tides."}],
            conversation_hash([{"role": "user", "content": "Explain tides."}]),
        )
        assert got[1][0] == "Name a colour\r\nplease."  # the text itself is kept as it was
        assert got[1][1] == [{"role": "user", "content": "Name a colour\nplease."}]
        migrate.downgrade(fresh_url, "0001")
        with engine.connect() as conn:
            texts = [r[0] for r in conn.execute(text("SELECT text FROM prompt ORDER BY id"))]
            columns = {c["name"] for c in inspect(engine).get_columns("prompt")}
        assert texts == ["Explain tides.", "Name a colour\r\nplease."] and "messages" not in columns


class TestDemonstrations:
    """0004 gives every existing set the kind "ranking" and, on SQLite too, where altering
    prompt_set copies the table, keeps every row hanging off it, up and down."""

    def test_existing_sets_become_ranking_sets_and_keep_their_prompts(self, fresh_url: str) -> None:
        migrate.upgrade(fresh_url, "0003")
        engine = get_engine(fresh_url)
        with engine.begin() as conn:
            _insert_old_set(conn)
            conn.execute(
                text(
                    "INSERT INTO prompt (prompt_set_id, text, text_hash, meta, messages, created_at) "
                    "SELECT id, 'Hi', 'h', '{}', '[]', CURRENT_TIMESTAMP FROM prompt_set"
                )
            )
        migrate.upgrade(fresh_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT kind, allow_proposals, train_on FROM prompt_set")).one() == (
                "ranking",
                False,
                "not_rejected",
            )
            assert conn.execute(text("SELECT count(*) FROM prompt")).scalar() == 1
        migrate.downgrade(fresh_url, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM prompt")).scalar() == 1
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
