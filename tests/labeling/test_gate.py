"""The labeling gate (app/overload.py): at most `slots` labeling requests at once, the rest in
arrival order, 503 + Retry-After past the timeout; other paths never wait on it. Driven over
ASGI with httpx against a small app whose labeling route holds its slot until told to go."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from app.config import Settings
from app.db import open_pool
from app.main import GC_THRESHOLD, create_app
from app.overload import LabelingGate
from tests.conftest import make_settings


def gated_app(slots: int, timeout: float) -> tuple[LabelingGate, asyncio.Event, list[str]]:
    app = FastAPI()
    go = asyncio.Event()
    served: list[str] = []

    @app.get("/api/v1/tasks/next")
    async def next_task(who: str) -> dict[str, str]:
        served.append(who)
        await go.wait()
        return {"who": who}

    @app.get("/healthz")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return LabelingGate(app, slots=slots, timeout=timeout), go, served


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_full_gate_answers_503_with_retry_after_and_other_paths_pass(anyio_backend: str) -> None:
    gate, go, served = gated_app(slots=1, timeout=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as client:
        first = asyncio.create_task(client.get("/api/v1/tasks/next", params={"who": "a"}))
        while not served:
            await asyncio.sleep(0.01)
        refused = await client.get("/api/v1/tasks/next", params={"who": "b"})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "nothing was lost" in refused.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200  # not gated
        go.set()
        assert (await first).json() == {"who": "a"}
    assert served == ["a"]  # the refused request never reached the route


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_waiting_requests_are_served_in_arrival_order(anyio_backend: str) -> None:
    gate, go, served = gated_app(slots=1, timeout=5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as client:
        calls = []
        for who in "abcde":
            calls.append(asyncio.create_task(client.get("/api/v1/tasks/next", params={"who": who})))
            await asyncio.sleep(0.02)  # arrive one after another
        assert served == ["a"]  # one slot: the others wait at the gate
        go.set()
        answers = [(await c).json()["who"] for c in calls]
    assert answers == list("abcde") and served == list("abcde")


def test_a_serving_process_opens_its_pool_freezes_what_startup_made_and_collects_less_often(
    db_url: str, tmp_path: Path
) -> None:
    """The web process's lifespan (app.main.serving) opens the PostgreSQL pool and tunes the
    garbage collector; a test app's does neither."""
    before = gc.get_threshold()
    settings = Settings(database_url=db_url, env="development", artifacts_dir=tmp_path, db_pool_size=3)
    served = create_app(settings)
    engine = served.state.sessionmaker.kw["bind"]
    try:
        with TestClient(served):
            assert gc.get_threshold() == GC_THRESHOLD
            assert gc.get_freeze_count() > 10_000  # modules, routes, templates: out of every collection
            if engine.dialect.name == "postgresql":  # all three open and idle before any request
                assert engine.pool.checkedin() == 3 and engine.pool.checkedout() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    with TestClient(create_app(make_settings(db_url))):
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_opening_the_pool_of_a_database_that_is_down_does_not_stop_the_start() -> None:
    """A worker starts while PostgreSQL is still coming up: nothing opened, no error; its
    requests answer 503 until the database is there (tests/labeling/test_db_faults.py)."""
    down = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/ranklab", pool_size=2)
    assert open_pool(down) == 0
