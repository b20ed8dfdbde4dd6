"""The database's connections die under load (a failover, a restart): the server answers 503
with Retry-After, never a 500 or a dropped connection, recovers at once, and loses nothing it
acknowledged. Real uvicorn, real HTTP, real PostgreSQL, pg_terminate_backend in the middle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth
from app.db import get_engine
from app.labeling.models import Annotation
from app.main import create_app
from tests.conftest import make_settings
from tests.factories import make_prompt_set, make_task, make_user
from tests.openai_server import ServerThread

LABELERS = 6


@pytest.fixture
def server(pg_url: str, committed_pg: sessionmaker[Session], tmp_path: Path) -> Iterator[str]:
    app = create_app(make_settings(pg_url, artifacts_dir=tmp_path / "a", db_pool_size=4))
    with ServerThread(app, what="the labeling server") as srv:
        yield srv.url


def _kill_backends(pg_url: str) -> int:
    """Terminate every connection to the test database but this one: the server's pool."""
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with engine.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )
    finally:
        engine.dispose()


def _labeler(base: str, token: str, stop: threading.Event, out: dict[str, list[Any]]) -> None:
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            try:
                r = client.get("/api/v1/tasks/next", headers=h)
            except httpx.HTTPError as e:  # a dropped connection
                out["dropped"].append(repr(e))
                continue
            out["status"].append((r.status_code, r.headers.get("retry-after")))
            if r.status_code != 200:
                continue
            task = r.json()
            ids = [c["id"] for c in task["completions"]]
            body = {"ranks": {str(c): i + 1 for i, c in enumerate(ids)}, "ratings": {str(c): 4 for c in ids}}
            url = f"/api/v1/assignments/{task['assignment_id']}/annotation"
            for _ in range(20):  # a 503 is safe to retry: submission is idempotent
                try:
                    s = client.post(url, headers=h, json=body)
                except httpx.HTTPError as e:
                    out["dropped"].append(repr(e))
                    break
                out["status"].append((s.status_code, s.headers.get("retry-after")))
                if s.status_code == 200:
                    out["acked"].append(s.json()["id"])
                    break
                if s.status_code != 503:
                    break
                time.sleep(0.05)


def test_killed_connections_answer_503_then_recover_and_lose_nothing(
    server: str, pg_url: str, committed_pg: sessionmaker[Session]
) -> None:
    with committed_pg.begin() as s:
        ps = make_prompt_set(s, k=3, overlap=2)
        for _ in range(400):
            make_task(s, prompt_set=ps)
        tokens = [auth.create_token(session=s, user=make_user(s)).token for _ in range(LABELERS)]
    out: dict[str, list[Any]] = {"status": [], "dropped": [], "acked": []}
    stop = threading.Event()
    threads = [threading.Thread(target=_labeler, args=(server, t, stop, out)) for t in tokens]
    for t in threads:
        t.start()
    killed = 0
    for _ in range(4):
        time.sleep(0.4)
        killed += _kill_backends(pg_url)
    time.sleep(0.4)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    codes = [c for c, _ in out["status"]]
    assert killed > 0, "no connection was killed: the test proved nothing"
    assert out["dropped"] == [], out["dropped"][:3]
    assert 500 not in codes
    assert {c for c in codes} <= {200, 503}, sorted(set(codes))
    assert all(ra == "1" for c, ra in out["status"] if c == 503)
    # Recovery: right after the last kill, requests succeed again.
    r = httpx.get(server + "/api/v1/tasks/next", headers={"Authorization": f"Bearer {tokens[1]}"}, timeout=30)
    assert r.status_code == 200, r.text
    # Nothing acknowledged is lost.
    with committed_pg() as s:
        stored = set(s.scalars(select(Annotation.id)))
    assert out["acked"] and set(out["acked"]) <= stored
    print(f"killed {killed} connections; {codes.count(503)} answers 503, {codes.count(200)} 200")


def test_pooled_connections_killed_while_idle_are_replaced_before_use(pg_url: str) -> None:
    """A failover while the pool sits idle: every checkout finds its dead connection (the
    socket turned readable: app/db.py `_drop_dead_connections`) and gets a fresh one, so no
    request ever runs on a dead connection and none answers 503."""
    engine = get_engine(pg_url, 3, 5.0)
    held = [engine.connect() for _ in range(3)]
    before = {c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held}
    for c in held:
        c.close()  # idle in the pool, open
    assert _kill_backends(pg_url) >= 3
    time.sleep(0.2)  # the FATAL message and the hang-up reach the sockets
    held = [engine.connect() for _ in range(3)]
    try:
        after = {c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held}
    finally:
        for c in held:
            c.close()
    assert after.isdisjoint(before) and len(after) == 3


def test_a_pooled_connection_told_something_harmless_while_idle_is_kept(pg_url: str) -> None:
    """A NOTIFY reaches an idle pooled connection that listens: its socket turns readable as a
    dead one's does, but the ping at checkout finds it alive, so the pool keeps it."""
    engine = get_engine(pg_url, 1, 5.0)
    with engine.connect() as c:
        pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        c.exec_driver_sql("LISTEN ranklab_pool_test")
        c.commit()
    with create_engine(pg_url, isolation_level="AUTOCOMMIT").connect() as other:
        other.exec_driver_sql("NOTIFY ranklab_pool_test")
    time.sleep(0.2)
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        c.exec_driver_sql("UNLISTEN *")
        c.commit()


def test_an_exhausted_pool_answers_503_json_for_the_api_and_a_page_for_browsers(
    pg_url: str, committed_pg: sessionmaker[Session], tmp_path: Path
) -> None:
    with committed_pg.begin() as s:
        token = auth.create_token(session=s, user=make_user(s)).token
    settings = make_settings(
        pg_url, artifacts_dir=tmp_path / "a", db_pool_size=1, db_pool_timeout_seconds=0.2
    )
    app = create_app(settings)
    engine = app.state.sessionmaker.kw["bind"]
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {token}"}
        held = engine.connect()  # the pool's only connection, taken: the next request must wait
        try:
            api = client.get("/api/v1/tasks/next", headers=h)
            page = client.get("/label", headers={**h, "Accept": "text/html"})
        finally:
            held.close()
        assert api.status_code == 503 and api.headers["retry-after"] == "1"
        assert "busy" in api.json()["detail"]
        assert page.status_code == 503 and page.headers["retry-after"] == "1"
        assert page.headers["content-type"].startswith("text/html") and "Try again" in page.text
        assert client.get("/api/v1/tasks/next", headers=h).status_code == 204  # free again: served
