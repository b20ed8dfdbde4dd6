"""Alembic environment: the URL comes from the caller (app.migrate) or from RANKLAB_DATABASE_URL."""

from typing import Any

from alembic import context

from app import all_models  # noqa: F401  (fills Base.metadata)
from app.config import get_settings
from app.db import Base, UTCDateTime, get_engine

config = context.config


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations stay free of app imports: our UTC type is a plain timezone-aware DateTime there.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    url = config.attributes.get("url") or get_settings().database_url
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with get_engine(url).connect() as conn:
        if conn.dialect.name != "sqlite":
            _run(conn)
            conn.commit()
            return
        # SQLite alters a table by copying it and dropping the old one; with foreign keys on,
        # that drop would cascade-delete every child row (a set's prompts, tasks, labels).
        # The pragma is a no-op inside a transaction, so it goes to the driver before BEGIN.
        raw: Any = conn.connection.dbapi_connection
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            _run(conn)
            conn.commit()
            broken = raw.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration left dangling foreign keys: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_item=render_item,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
