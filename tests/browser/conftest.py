"""A live server and Debian's Chromium, for tests that drive the real pages.

The server is the real app under uvicorn, in a thread on 127.0.0.1 and a free port, against a
migrated SQLite file whose rows the tests commit. The browser is Debian's `chromium` package,
launched by Playwright's sync API: one per module. Without it these tests skip locally and fail
on CI (CI=true), where a missing browser must never pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import migrate
from app.db import get_engine, make_sessionmaker
from app.main import create_app
from tests.conftest import ON_CI, make_settings
from tests.factories import PASSWORD
from tests.openai_server import ServerThread

CHROMIUM = os.environ.get("RANKLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TEST_OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def _chromium() -> str:
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not found:
        message = f"Chromium is not installed at {CHROMIUM}: apt-get install -y chromium"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


class LiveServer:
    def __init__(self, url: str, sessions: sessionmaker[Session]) -> None:
        self.url = url
        self.sessions = sessions


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('browserdb') / 'live.db'}"
    migrate.upgrade(db_url)
    app = create_app(make_settings(db_url, artifacts_dir=tmp_path_factory.mktemp("artifacts")))
    with ServerThread(app, what="the live server", lifespan="off") as server:
        yield LiveServer(server.url, make_sessionmaker(db_url))
    get_engine(db_url).dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server: LiveServer) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=live_server.url)
    context.set_default_timeout(10_000)
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture
def test_output() -> Path:
    TEST_OUTPUT.mkdir(exist_ok=True)
    return TEST_OUTPUT


def sign_in(page: Any, username: str) -> None:
    """Through the login form, as a person would; lands on the home page."""
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
