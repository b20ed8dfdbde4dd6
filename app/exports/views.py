"""Exports (download form, streaming downloads, manifests) and the token API
`GET /api/v1/exports/{format}`. Researchers and admins only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.auth.deps import CurrentResearcher, Forbidden
from app.auth.models import Role, User
from app.db import SessionDep
from app.errors import MAX_ROW_ID, has_nul
from app.exports import formats
from app.exports import service as exports
from app.exports.filters import ExportError, Filters, parse_fractions, parse_time, resolve_labelers
from app.exports.formats import RowOptions
from app.prompts.models import PromptSet
from app.ranking import SPLITS
from app.runs.models import ModelVersion
from app.web import render

router = APIRouter(tags=["exports"])
api = APIRouter(tags=["exports"])

TRUE = {"1", "true", "on", "yes"}
FLAG = "1, true, on or yes to turn on"


class ExportQuery(BaseModel):
    """The export filters and options, as query parameters. Read as text and checked by
    parse_request, so that every refusal names its parameter the same way here, on the download
    form and in the CLI."""

    file: str = Field("jsonl", description="jsonl, jsonl.gz or parquet")
    set: list[str] = Field([], description="Prompt set ids; repeat the parameter or separate with commas")
    policy: list[str] = Field([], description="Policy version ids of the completions; as `set`")
    since: str | None = Field(None, description="Annotations made at or after this ISO date or time (UTC)")
    until: str | None = Field(None, description="Annotations made before this ISO date or time (UTC)")
    labeler: list[str] = Field([], description="Usernames, pseudonyms (L-3f9a2c) or user ids; as `set`")
    include_skipped: str = Field("", description=f"Skipped tasks too: {FLAG}")
    exclude_flagged: str = Field("", description=f"Leave out annotations with any flag: {FLAG}")
    min_labels: str = Field("0", description=f"Only tasks with at least this many labels (0 to {MAX_ROW_ID})")
    split: str | None = Field(None, description="train, validation or test (split by prompt)")
    seed: str = Field("0", description="Seed of the split")
    fractions: str = Field("0.9,0.05,0.05", description="train,validation,test shares of the split")
    conversational: str = Field("", description=f"trl: messages instead of text: {FLAG}")
    margin: str = Field("none", description="trl: none, rank or rating")
    real_names: str = Field("", description=f"Usernames instead of pseudonyms (admins): {FLAG}")


ExportQueryDep = Annotated[ExportQuery, Query()]


def parse_ids(values: list[str], name: str) -> list[int]:
    """Ids from repeated and comma-separated values; ids and counts are 32-bit columns."""
    out = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                if not part.strip().isdigit() or int(part) > MAX_ROW_ID:
                    raise ExportError(name, f"not an id: {part!r}")
                out.append(int(part))
    return out


def _int(value: str, name: str) -> int:
    # The length cap: int() refuses strings of over 4,300 digits with an error of its own.
    try:
        if len(value) > 30:
            raise ValueError
        return int(value or 0)
    except ValueError:
        raise ExportError(name, f"not a whole number: {value[:40]!r}") from None


def parse_request(
    q: ExportQuery, *, user: User, session: Any, secret: str
) -> tuple[Filters, RowOptions, str, bool]:
    """Filters and options from query parameters; ExportError names a bad one."""
    real_names = q.real_names.lower() in TRUE
    if real_names and user.role != Role.admin:
        raise Forbidden("Real labeler names are for admins; exports name labelers by pseudonym.")
    margin = q.margin or "none"
    if margin not in ("none", "rank", "rating"):
        raise ExportError("margin", f"one of none, rank, rating, not {margin!r}")
    min_labels = _int(q.min_labels, "min_labels")
    if not 0 <= min_labels <= MAX_ROW_ID:
        raise ExportError("min_labels", f"a whole number from 0 to {MAX_ROW_ID}, not {min_labels}")
    seed = _int(q.seed, "seed")
    fractions = parse_fractions(q.fractions or "0.9,0.05,0.05", "fractions")
    labelers = [n for v in q.labeler for n in v.split(",") if n.strip()]
    if any(has_nul(n) for n in labelers):
        raise ExportError("labeler", "contains a NUL character (\\u0000)")
    filters = Filters(
        prompt_set_ids=parse_ids(q.set, "set"),
        policy_version_ids=parse_ids(q.policy, "policy"),
        since=parse_time(q.since, "since"),
        until=parse_time(q.until, "until"),
        labeler_ids=resolve_labelers(session=session, names=labelers, secret=secret),
        include_skipped=q.include_skipped.lower() in TRUE,
        exclude_flagged=q.exclude_flagged.lower() in TRUE,
        min_labels=min_labels,
        split=q.split or None,
        split_seed=seed,
        split_fractions=fractions,
    )
    opts = RowOptions(conversational=q.conversational.lower() in TRUE, margin=margin)  # type: ignore[arg-type]
    return filters, opts, q.file or "jsonl", real_names


def _start(request: Request, q: ExportQuery, fmt: str, user: User, session: Any) -> exports.Export:
    secret = request.app.state.settings.secret_key
    filters, opts, file_type, real_names = parse_request(q, user=user, session=session, secret=secret)
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
    request: Request, q: ExportQuery, fmt: str, user: User, session: Any, manifest_url: str
) -> Response:
    ex = _start(request, q, fmt, user, session)
    name = exports.filename_for(fmt, ex.file_type, ex.filters.split)
    query = request.url.query
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Ranklab-Schema-Version": str(formats.SCHEMA_VERSION),
        "Link": f'<{manifest_url}{"?" + query if query else ""}>; rel="describedby"',
        "Cache-Control": "no-store",
    }
    return StreamingResponse(iter(ex.stream), media_type=formats.MEDIA_TYPES[ex.file_type], headers=headers)


def _manifest(request: Request, q: ExportQuery, fmt: str, user: User, session: Any) -> Response:
    """Runs the export into a hash (nothing kept) so the manifest's sha256 and counts are those
    of the file the same request downloads."""
    ex = _start(request, q, fmt, user, session)
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
        "splits": SPLITS,
    }


@router.get("/exports")
def exports_page(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    return render(request, "exports/index.html", filter_choices(session))


Format = Annotated[str, Query(alias="format", description="comparisons, trl, rankings, groups or sft")]


@router.get("/exports/download")
def exports_download(
    request: Request, user: CurrentResearcher, session: SessionDep, q: ExportQueryDep, fmt: Format = ""
) -> Response:
    return _stream(request, q, fmt or "comparisons", user, session, "/exports/manifest")


@router.get("/exports/manifest")
def exports_manifest(
    request: Request, user: CurrentResearcher, session: SessionDep, q: ExportQueryDep, fmt: Format = ""
) -> Response:
    return _manifest(request, q, fmt or "comparisons", user, session)


# --- JSON API -------------------------------------------------------------------------------


@api.get(
    "/exports/{fmt}",
    summary="Stream an export (JSON Lines, gzip or Parquet)",
    response_class=StreamingResponse,
)
def api_export(
    fmt: str, request: Request, user: CurrentResearcher, session: SessionDep, q: ExportQueryDep
) -> Response:
    """Formats: comparisons, trl, rankings, groups, sft (demonstrations that count for training,
    `{"messages": [..., {"role": "assistant", ...}]}`); the query parameters filter the records
    (the same filters as `ranklab export` and the training runs)."""
    return _stream(request, q, fmt, user, session, f"/api/v1/exports/{fmt}/manifest")


@api.get("/exports/{fmt}/manifest", summary="Manifest of the export with the same query")
def api_manifest(
    fmt: str, request: Request, user: CurrentResearcher, session: SessionDep, q: ExportQueryDep
) -> Response:
    return _manifest(request, q, fmt, user, session)
