"""Engine, sessions and the declarative base. Alembic makes the schema; nothing here creates tables."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from select import select
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import JSON, Connection, DateTime, Engine, Index, MetaData, create_engine, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Session,
    make_transient_to_detached,
    sessionmaker,
)
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import TypeDecorator
from starlette.concurrency import run_in_threadpool

_T = TypeVar("_T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index over the rows where `where` holds (PostgreSQL and SQLite alike)."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where), sqlite_where=text(where))


def partial_unique(name: str, *columns: str, where: str) -> Index:
    """A unique index over the rows where `where` holds: at most one such row per value of `columns`."""
    return partial_index(name, *columns, where=where, unique=True)


Q = TypeVar("Q", bound=Select[*tuple[Any, ...]])


def where_given(query: Q, *filters: tuple[ColumnElement[Any] | InstrumentedAttribute[Any], object]) -> Q:
    """`query` narrowed to `column == value` for each (column, value) whose value was given: a
    list page's optional filters, where None (or an empty form field) means "any"."""
    for column, value in filters:
        if value is not None and value != "":
            query = query.where(column == value)
    return query


def newest_first(
    query: Q,
    created: InstrumentedAttribute[Any],
    key: InstrumentedAttribute[Any],
    *filters: tuple[ColumnElement[Any] | InstrumentedAttribute[Any], object],
    limit: int,
) -> Q:
    """A list page's query: newest first (ties broken by `key`), at most `limit` rows, narrowed by
    the optional `filters` as in `where_given`."""
    ordered = query.order_by(created.desc(), key.desc()).limit(limit)
    return where_given(ordered, *filters)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite, which keeps no zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType, list[Any]: JSONType}


def refresh_statistics(session: Session, *tables: str) -> None:
    """ANALYZE `tables` on PostgreSQL (SQLite keeps none worth the name): after a set's tasks open
    by the hundred, so the claim's plan walks the queue in id order at once, not after autovacuum's
    next round. Planned without statistics, each claim read every open task and sorted them (8,535
    buffers and 13.8 ms against 226 and 0.45 ms, EXPLAIN ANALYZE on 3,000 open tasks)."""
    if session.get_bind().dialect.name == "postgresql":
        for table in tables:
            session.execute(text(f'ANALYZE "{table}"'))


def _sqlite_pragmas(engine: Engine) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


POOL_SIZE = 8
POOL_TIMEOUT_SECONDS = 5.0


@lru_cache(maxsize=16)
def get_engine(url: str, pool_size: int = POOL_SIZE, pool_timeout: float = POOL_TIMEOUT_SECONDS) -> Engine:
    """One engine per URL and pool shape. PostgreSQL's pool is bounded on purpose, without
    overflow: a request that waits `pool_timeout` for a connection gets a 503 with Retry-After
    (app/overload.py) rather than a queue that grows without bound. Each checkout first drops
    the connections a database restart or failover killed (`_drop_dead_connections`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout)
    _drop_dead_connections(engine)
    return engine


def _drop_dead_connections(engine: Engine) -> None:
    """Pre-ping without a round trip on every checkout. An idle pooled connection has nothing
    to read unless the server said something: a terminated backend (failover, restart,
    pg_terminate_backend) sends its FATAL message and hangs up, so its socket turns readable.
    Only then is the connection pinged (a notice or a NOTIFY also arrive unasked, and those
    leave it usable); a dead one raises DisconnectionError and the pool hands out a fresh
    connection instead. SQLAlchemy's pool_pre_ping spends a `SELECT 1` round trip on every
    checkout: one more statement per request for the database. A connection that dies
    mid-request still answers 503 (app/overload.py)."""

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_conn.closed:
            raise DisconnectionError("this pooled connection was closed")
        if select([dbapi_conn.fileno()], [], [], 0)[0]:
            try:
                engine.dialect.do_ping(dbapi_conn)
            except engine.dialect.loaded_dbapi.Error as exc:
                raise DisconnectionError("the server closed this pooled connection") from exc


def open_pool(engine: Engine | Connection) -> int:
    """Opens a PostgreSQL pool's connections now, at a worker's start, so that its first
    labelers do not each wait for a backend to be forked and authenticated (measured: the first
    request of each of 10 labelers took 165–230 ms against a p50 of 40 ms). A database that is
    not up yet is no reason not to start: its requests answer 503 until it is. Returns how many
    connections were opened."""
    if not isinstance(engine, Engine) or engine.dialect.name != "postgresql":
        return 0  # a test's app may be bound to one connection; SQLite opens files, not backends
    if not isinstance(engine.pool, QueuePool):
        return 0
    opened: list[Connection] = []
    try:
        while len(opened) < engine.pool.size():
            opened.append(engine.connect())
    except OperationalError:
        pass
    finally:
        for connection in opened:
            connection.close()  # back to the pool, still open
    return len(opened)


def make_sessionmaker(
    url: str, *, pool_size: int = POOL_SIZE, pool_timeout: float = POOL_TIMEOUT_SECONDS
) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, pool_size, pool_timeout), expire_on_commit=False)


def cli_sessions() -> sessionmaker[Session]:
    """A sessionmaker for the configured database (CLI commands open short transactions with it)."""
    from app.config import get_settings

    return make_sessionmaker(get_settings().database_url)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request: committed when the handler returns, rolled back if it raises
    (a domain error included: app/main.py answers it after this has undone everything).
    Async, so that making the session (no I/O) costs no hop to a thread; its end (commit and
    close) takes one, unless the handler committed in its own hop (`in_one_hop`)."""
    session: Session = request.app.state.sessionmaker()
    handled = False
    try:
        yield session
        handled = True
    finally:
        if handled and not session.in_transaction():
            session.close()  # committed already, or never used: nothing to send the database
        else:
            await run_in_threadpool(_end, session, handled)


async def in_one_hop(session: Session, work: Callable[[], _T]) -> _T:
    """An async handler's blocking work and the request's commit in one hop to a worker thread.
    A plain `def` handler that returns a response model costs three hops (the handler, the
    response's validation, the session's end), each a wake-up of a thread and a GIL handover;
    the labeling API's hot routes take one. If `work` raises, nothing is committed and the
    session dependency rolls back as for any handler."""

    def run() -> _T:
        result = work()
        session.commit()
        return result

    return await run_in_threadpool(run)


def _end(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
    finally:
        # close() rolls back whatever was not committed; rollback() would also expire the
        # logged-in user that an error page (403 from a role check) still has to show.
        session.close()


# scope="function": the commit happens before the response leaves, so nothing acknowledged is lost.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def attach(session: Session, cls: type[_T], values: dict[str, Any]) -> _T:
    """A row already read (its column values) as a persistent object of this session, without
    a query and without merge()'s cost: the hot paths read rows as Core and still hand ORM
    objects on. A copy already in the session is updated and returned instead."""
    found = session.identity_map.get(identity_key(cls, values["id"]))
    if isinstance(found, cls):
        for key, value in values.items():
            set_committed_value(found, key, value)
        return found
    obj = cls(**values)
    make_transient_to_detached(obj)  # as if loaded: clean, so adding it emits nothing
    session.add(obj)
    return obj


@contextmanager
def undone_on_error(session: Session) -> Iterator[None]:
    """For a page that shows a refused form again within the same request: the block's writes
    are undone if it raises (a savepoint), so the page reads, and the request commits, the state
    before it. Routes that let the error reach the handler need none of this."""
    with session.begin_nested():
        yield
