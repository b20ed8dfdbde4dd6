"""503 with Retry-After when the database cannot serve a request now: the pool is exhausted
(no connection freed within RANKLAB_DB_POOL_TIMEOUT_SECONDS) or the connection died mid-request
(a failover, a restart, pg_terminate_backend). Never a 500, never a dropped connection; the
request is safe to retry (submission is idempotent), and the pool's check at checkout
(app/db.py) gives the retry a live connection. Errors that are the request's own (a
constraint, bad SQL) stay what they are."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

RETRY_AFTER_SECONDS = 1
MESSAGE = "The database is busy or reconnecting. Try again in a moment: nothing was lost."

_PAGE = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Busy: try again</title><link rel="stylesheet" href="/static/app.css"></head>
<body><main><section class="card narrow"><h1>One moment</h1>
<p class="error" role="alert">{MESSAGE}</p><p><a href="">Try again</a></p></section></main></body></html>"""


def unavailable_response(request: Request) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": MESSAGE}, status_code=503, headers=headers)
    return HTMLResponse(_PAGE, status_code=503, headers=headers)


# The labeling hot path: many labelers, short requests, one database connection each.
GATED_PREFIXES = ("/api/v1/tasks", "/api/v1/assignments", "/label")


class LabelingGate:
    """Admits at most `slots` labeling requests at a time (the pool's size), the rest wait in
    arrival order on the event loop, and one that waits past `timeout` seconds is answered 503
    with Retry-After. Without it, a hundred labelers' requests all reach the thread pool at once
    and race for eight connections: the pool favours no one, so some wait the whole pool
    timeout while others pass, and the threads' contention costs CPU. In order, each waits
    about (requests ahead) / (throughput) — fair, and no slower in total."""

    def __init__(self, app: Any, *, slots: int, timeout: float) -> None:
        self.app, self.slots, self.timeout = app, slots, timeout
        self._gate: asyncio.Semaphore | None = None  # made on the serving loop

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GATED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.slots)
        try:
            await asyncio.wait_for(self._gate.acquire(), self.timeout)
        except TimeoutError:
            await unavailable_response(Request(scope))(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._gate.release()


def install(app: FastAPI) -> None:
    """The database, not the request, is at fault: an exhausted pool (PoolTimeout), a connection
    lost or refused (OperationalError: terminated, shutdown, too many clients; SQLite's "database
    is locked"; a serialization failure) or closed under us (InterfaceError)."""

    async def _handler(request: Request, _exc: Exception) -> Response:
        return unavailable_response(request)

    for kind in (PoolTimeout, OperationalError, InterfaceError):
        app.add_exception_handler(kind, _handler)
