"""create_app(): routers, templates, static files, and the one mapping of errors to HTTP."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from app import overload
from app.auth import views as auth_views
from app.auth.deps import Forbidden, LoginRequired
from app.config import Settings, get_settings
from app.db import make_sessionmaker, open_pool
from app.demonstrations import views as demonstrations_views
from app.errors import DomainError, Invalid, Problem, ProblemsOut
from app.exports import views as exports_views
from app.imports import views as imports_views
from app.labeling import views as labeling_views
from app.prompts import proposal_views
from app.prompts import views as prompts_views
from app.quality import views as quality_views
from app.runs import launch as runs_launch
from app.runs import launch_round as runs_launch_round
from app.runs import views as runs_views
from app.web import ROOT, render

# A request is matched against each included router's routes in this order, so the labeling
# API, the hot path, comes first and every JSON API before the pages: behind 40 other routes
# its `next` + submit cost 9.6 ms of CPU in process, first 8.4 ms.
DOMAINS = (
    labeling_views,
    auth_views,
    prompts_views,
    proposal_views,
    demonstrations_views,
    exports_views,
    imports_views,
    quality_views,
    runs_views,
)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return request.url.path.startswith("/api/") or (
        "application/json" in accept and "text/html" not in accept
    )


# Young objects collected every 20,000 net allocations, not every 700: a labeling request makes
# a few thousand (rows, dicts, pydantic models), nearly all freed by reference counting.
GC_THRESHOLD = (20_000, 20, 20)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[None]:
    """A serving process's start. Its database pool is opened (app/db.py `open_pool`). What
    startup made (modules, routes, templates, a few hundred thousand objects) is frozen out of
    every collection, and the young generation is collected less often, so a full collection
    no longer walks the whole heap in the middle of a labeler's request. Not under tests (env
    "test"), whose processes make and drop many apps."""
    if app.state.settings.env != "test":
        await run_in_threadpool(open_pool, app.state.sessionmaker.kw["bind"])
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        lifespan=serving,
        title="ranklab",
        summary="Human preference labeling for RLHF. API tokens: `Authorization: Bearer <token>`.",
        docs_url="/api/v1/docs",
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
        # The one 422 shape (the handler below), documented instead of FastAPI's own.
        responses={422: {"model": ProblemsOut, "description": "Refused input, each place named."}},
    )
    app.state.settings = settings
    app.state.sessionmaker = make_sessionmaker(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    for domain in DOMAINS:
        app.include_router(domain.api, prefix="/api/v1")
    for domain in DOMAINS:
        app.include_router(domain.router)
    app.include_router(runs_launch.router)
    app.include_router(runs_launch_round.router)
    overload.install(app)  # 503 + Retry-After when the database is exhausted or reconnecting
    app.add_middleware(
        overload.LabelingGate, slots=settings.db_pool_size, timeout=settings.db_pool_timeout_seconds
    )

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_json(request):
            return JSONResponse(
                {"detail": exc.message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        target = "/login?next=" + quote(request.url.path)
        if request.headers.get("HX-Request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=403)
        return render(request, "error.html", {"message": exc.message}, status_code=403)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> Response:
        """The one mapping of domain errors to HTTP; the session was rolled back already."""
        if isinstance(exc, Invalid):
            return _problems(request, exc.problems, truncated=exc.truncated)
        if _wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
        return render(request, "error.html", {"message": exc.message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            Problem(None, None, ".".join(str(p) for p in e["loc"] if p != "body"), e["msg"])
            for e in exc.errors()
        ]
        return _problems(request, problems)

    return app


def _problems(request: Request, problems: list[Problem], *, truncated: bool = False) -> Response:
    """A 422: the same JSON shape for every route under /api, an error page in the browser."""
    if _wants_json(request):
        body: dict[str, object] = {"detail": [p.as_dict() for p in problems]}
        if truncated:
            body["truncated"] = True
        return JSONResponse(body, status_code=422)
    lines = "; ".join(str(p) for p in problems)
    return render(request, "error.html", {"message": lines}, status_code=422)
