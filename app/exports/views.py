"""Exports (download form, streaming downloads, manifests) and the token API
`GET /api/v1/exports/{format}`. Researchers and admins only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.datastructures import QueryParams

from app.auth.deps import CurrentResearcher, Forbidden
from app.auth.models import Role, User
from app.db import SessionDep
from app.exports import formats
from app.exports import service as exports
from app.exports.formats import RowOptions
from app.prompts.models import PromptSet
from app.runs.models import ModelVersion
from app.web import render

router = APIRouter(tags=["exports"])
api = APIRouter(tags=["exports"])

TRUE = {"1", "true", "on", "yes"}
MAX_ID = 2**31 - 1  # ids and counts are 32-bit integers: PostgreSQL refuses larger numbers (a 500)


def parse_ids(q: QueryParams, name: str) -> list[int]:
    out = []
    for v in q.getlist(name):
        for part in v.split(","):
            if part.strip():
                if not part.strip().isdigit() or int(part) > MAX_ID:
                    raise exports.ExportError(f"{name}: not an id: {part!r}")
                out.append(int(part))
    return out


def _int(q: QueryParams, name: str) -> int:
    try:
        return int(q.get(name) or 0)
    except ValueError:
        raise exports.ExportError(f"{name}: not a whole number: {q.get(name)!r}") from None


def parse_request(
    q: QueryParams, *, user: User, session: Any, secret: str
) -> tuple[exports.Filters, RowOptions, str, bool]:
    """Filters and options from query parameters; ExportError names a bad one."""
    real_names = q.get("real_names", "").lower() in TRUE
    if real_names and user.role != Role.admin:
        raise Forbidden("Real labeler names are for admins; exports name labelers by pseudonym.")
    margin = q.get("margin") or "none"
    if margin not in ("none", "rank", "rating"):
        raise exports.ExportError(f"margin: one of none, rank, rating, not {margin!r}")
    min_labels = _int(q, "min_labels")
    if not 0 <= min_labels <= MAX_ID:
        raise exports.ExportError(f"min_labels: a whole number from 0 to {MAX_ID}, not {min_labels}")
    seed = _int(q, "seed")
    fractions = exports.parse_fractions(q.get("fractions") or "0.9,0.05,0.05", "fractions")
    labelers = [n for v in q.getlist("labeler") for n in v.split(",") if n.strip()]
    filters = exports.Filters(
        prompt_set_ids=parse_ids(q, "set"),
        policy_version_ids=parse_ids(q, "policy"),
        since=exports.parse_time(q.get("since"), "since"),
        until=exports.parse_time(q.get("until"), "until"),
        labeler_ids=exports.resolve_labelers(session=session, names=labelers, secret=secret),
        include_skipped=q.get("include_skipped", "").lower() in TRUE,
        exclude_flagged=q.get("exclude_flagged", "").lower() in TRUE,
        min_labels=min_labels,
        split=q.get("split") or None,
        split_seed=seed,
        split_fractions=fractions,
    )
    opts = RowOptions(conversational=q.get("conversational", "").lower() in TRUE, margin=margin)  # type: ignore[arg-type]
    return filters, opts, q.get("file") or "jsonl", real_names


def _start(request: Request, fmt: str, user: User, session: Any) -> exports.Export:
    secret = request.app.state.settings.secret_key
    filters, opts, file_type, real_names = parse_request(
        request.query_params, user=user, session=session, secret=secret
    )
    return exports.export(
        session_factory=request.app.state.sessionmaker,
        fmt=fmt,
        file_type=file_type,
        filters=filters,
        opts=opts,
        secret=secret,
        real_names=real_names,
    )


def _stream(
    request: Request, fmt: str, user: User, session: Any, manifest_url: str, html: bool = False
) -> Response:
    try:
        ex = _start(request, fmt, user, session)
    except exports.ExportError as exc:
        if html:  # the download form's error is read in the browser, not by a script
            return render(request, "error.html", {"message": str(exc)}, status_code=422)
        return JSONResponse({"detail": str(exc)}, status_code=422)
    name = exports.filename_for(fmt, ex.file_type, ex.filters.split)
    query = request.url.query
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Ranklab-Schema-Version": str(formats.SCHEMA_VERSION),
        "Link": f'<{manifest_url}{"?" + query if query else ""}>; rel="describedby"',
        "Cache-Control": "no-store",
    }
    return StreamingResponse(iter(ex.stream), media_type=formats.MEDIA_TYPES[ex.file_type], headers=headers)


def _manifest(request: Request, fmt: str, user: User, session: Any) -> Response:
    """Runs the export into a hash (nothing kept) so the manifest's sha256 and counts are those
    of the file the same request downloads."""
    try:
        ex = _start(request, fmt, user, session)
    except exports.ExportError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    for _ in ex.stream:
        pass
    return JSONResponse(ex.manifest(filename=exports.filename_for(fmt, ex.file_type, ex.filters.split)))


# --- pages ----------------------------------------------------------------------------------


def filter_choices(session: Any) -> dict[str, Any]:
    return {
        "sets": list(session.execute(select(PromptSet.id, PromptSet.name).order_by(PromptSet.id))),
        "policies": list(
            session.execute(
                select(ModelVersion.id, ModelVersion.name)
                .where(ModelVersion.kind == "policy")
                .order_by(ModelVersion.id)
            )
        ),
        "formats": formats.FORMATS,
        "file_types": formats.FILE_TYPES,
        "splits": exports.SPLITS,
    }


@router.get("/exports")
def exports_page(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    return render(request, "exports/index.html", filter_choices(session))


@router.get("/exports/download")
def exports_download(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    fmt = request.query_params.get("format") or "comparisons"
    return _stream(request, fmt, user, session, "/exports/manifest", html=True)


@router.get("/exports/manifest")
def exports_manifest(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    return _manifest(request, request.query_params.get("format") or "comparisons", user, session)


# --- JSON API -------------------------------------------------------------------------------


@api.get(
    "/exports/{fmt}",
    summary="Stream an export (JSON Lines, gzip or Parquet)",
    response_class=StreamingResponse,
)
def api_export(fmt: str, request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    """Formats: comparisons, trl, rankings, groups. Query: file=jsonl|jsonl.gz|parquet, set=ID
    (repeatable), policy=ID, since, until (ISO), labeler=NAME|PSEUDONYM, include_skipped,
    exclude_flagged, min_labels=N, split=train|validation|test, seed, fractions=0.9,0.05,0.05,
    conversational (trl), margin=none|rank|rating (trl), real_names (admins)."""
    return _stream(request, fmt, user, session, f"/api/v1/exports/{fmt}/manifest")


@api.get("/exports/{fmt}/manifest", summary="Manifest of the export with the same query")
def api_manifest(fmt: str, request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    return _manifest(request, fmt, user, session)
