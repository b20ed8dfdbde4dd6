"""Exports (download form, streaming downloads, manifests), preference import, quality page,
and the token API `GET /api/v1/exports/{format}`. Researchers and admins only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.datastructures import QueryParams

from app.auth.deps import CurrentResearcher, Forbidden
from app.auth.models import Role, User
from app.db import SessionDep
from app.exports import formats, importer, quality
from app.exports import service as exports
from app.exports.charts import Bar, bar_chart
from app.exports.formats import RowOptions
from app.prompts.models import PromptSet
from app.runs.models import ModelVersion
from app.web import render

router = APIRouter(tags=["exports"])
api = APIRouter(tags=["exports"])

TRUE = {"1", "true", "on", "yes"}
MAX_ID = 2**31 - 1  # ids and counts are 32-bit integers: PostgreSQL refuses larger numbers (a 500)


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise exports.ExportError(f"{name}: not an ISO date or time: {value!r}") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _ints(q: QueryParams, name: str) -> list[int]:
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
    try:
        fractions = tuple(float(x) for x in (q.get("fractions") or "0.9,0.05,0.05").split(","))
    except ValueError as exc:
        raise exports.ExportError(f"fractions: {exc}") from exc
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise exports.ExportError("fractions: three non-negative numbers: train,validation,test")
    labelers = [n for v in q.getlist("labeler") for n in v.split(",") if n.strip()]
    filters = exports.Filters(
        prompt_set_ids=_ints(q, "set"),
        policy_version_ids=_ints(q, "policy"),
        since=_time(q.get("since"), "since"),
        until=_time(q.get("until"), "until"),
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


def _choices(session: Any) -> dict[str, Any]:
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
    return render(request, "exports/index.html", _choices(session))


@router.get("/exports/download")
def exports_download(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    fmt = request.query_params.get("format") or "comparisons"
    return _stream(request, fmt, user, session, "/exports/manifest", html=True)


@router.get("/exports/manifest")
def exports_manifest(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    return _manifest(request, request.query_params.get("format") or "comparisons", user, session)


@router.get("/exports/import")
def import_page(request: Request, user: CurrentResearcher) -> Response:
    return render(request, "exports/import.html", {"kinds": importer.KINDS})


@router.post("/exports/import")
async def import_upload(
    request: Request,
    user: CurrentResearcher,
    session: SessionDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form()],
    kind: Annotated[str, Form()] = "auto",
    skip_invalid: Annotated[bool, Form()] = False,
) -> Response:
    limit = int(request.app.state.settings.max_upload_mb * 1024 * 1024)
    data = await file.read(limit + 1)
    ctx: dict[str, Any] = {"kinds": importer.KINDS, "name": name, "kind": kind}
    if len(data) > limit:
        ctx["refused"] = f"{file.filename}: larger than {request.app.state.settings.max_upload_mb:g} MB"
        return render(request, "exports/import.html", ctx, status_code=413)
    try:
        result = importer.import_preferences(
            session=session,
            data=data,
            filename=file.filename or "upload",
            name=name,
            kind=kind,
            skip_invalid=skip_invalid,
            created_by_id=user.id,
        )
    except importer.ImportRefused as exc:
        session.rollback()
        ctx.update(refused=str(exc), errors=[str(e) for e in exc.errors], filename=file.filename)
        return render(request, "exports/import.html", ctx, status_code=422)
    ctx.update(result=result, skipped=[str(e) for e in result.skipped], filename=file.filename)
    return render(request, "exports/import.html", ctx)


@router.get("/quality")
def quality_page(request: Request, user: CurrentResearcher, session: SessionDep) -> Response:
    try:
        set_ids = _ints(request.query_params, "set")
    except exports.ExportError as exc:
        return render(request, "error.html", {"message": str(exc)}, status_code=422)
    show_names = request.query_params.get("real_names", "").lower() in TRUE and user.role == Role.admin
    ctx = _choices(session) | quality_context(
        session=session, set_ids=set_ids, show_names=show_names, secret=request.app.state.settings.secret_key
    )
    ctx.update(selected=set_ids, show_names=show_names)
    return render(request, "exports/quality.html", ctx, block="results")


def quality_context(*, session: Any, set_ids: list[int], show_names: bool, secret: str) -> dict[str, Any]:
    anns = quality.load(session=session, prompt_set_ids=set_ids)
    overall, _ = quality.agreement(anns)
    stats = quality.labeler_stats(anns)
    names = dict(session.execute(select(User.id, User.username)).all()) if show_names else {}
    versions = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    set_names = dict(session.execute(select(PromptSet.id, PromptSet.name)).all())

    def who(uid: int) -> str:
        return names.get(uid) or exports.pseudonym(uid, secret)

    wins = quality.win_rates(anns, newer_than=quality.version_order(session=session))
    labeled = [s for s in stats if s.annotations]
    return {
        "n_annotations": sum(1 for a in anns if not a.skipped),
        "overall": overall,
        "stats": stats,
        "who": who,
        "wins": wins,
        "versions": versions,
        "set_names": set_names,
        "chart_agreement": bar_chart(
            [
                Bar(who(s.user_id), s.agreement.rate, *s.agreement.interval)
                for s in labeled
                if s.agreement.compared
            ],
            title="Agreement with other labelers (share of pairs ordered alike)",
            ref=overall.rate,
            ref_label="all labelers",
        ),
        "chart_position": bar_chart(
            [Bar(who(s.user_id), s.first_wins, ref=s.first_expected) for s in labeled],
            title="Position bias: output shown first ranked best (red mark: 1/K)",
        ),
        "chart_wins": bar_chart(
            [
                Bar(
                    f"{versions.get(w.newer, w.newer)} vs {versions.get(w.older, w.older)}",
                    w.rate,
                    *w.interval,
                )
                for w in wins
            ],
            title="Newer policy's win rate, 95% interval",
            ref=0.5,
            ref_label="no preference",
        ),
    }


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


@api.get("/quality", summary="Agreement, labeler statistics and policy win rates")
def api_quality(request: Request, user: CurrentResearcher, session: SessionDep) -> dict[str, Any]:
    """The figures of the /quality page as JSON. Query: set=ID (repeatable; default all),
    real_names=1 (admins). Rates are shares in [0, 1]; intervals are 95% Wilson intervals."""
    real = request.query_params.get("real_names", "").lower() in TRUE
    if real and user.role != Role.admin:
        raise Forbidden("Real labeler names are for admins; labelers are named by pseudonym.")
    try:
        set_ids = _ints(request.query_params, "set")
    except exports.ExportError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)  # type: ignore[return-value]
    ctx = quality_context(
        session=session,
        set_ids=set_ids,
        show_names=real,
        secret=request.app.state.settings.secret_key,
    )
    overall, who, versions = ctx["overall"], ctx["who"], ctx["versions"]

    def agreement(a: quality.Agreement) -> dict[str, Any]:
        return {
            "rate": a.rate,
            "interval": list(a.interval) if a.compared else None,
            "pairs": a.compared,
            "kendall_tau_b": a.tau,
        }

    return {
        "annotations": ctx["n_annotations"],
        "agreement": agreement(overall) | {"labeler_pairs": overall.task_pairs},
        "labelers": [
            {
                "labeler": who(s.user_id),
                "annotations": s.annotations,
                "skipped": s.skipped,
                "skip_rate": s.skip_rate,
                "median_time_s": s.median_time_s,
                "agreement": agreement(s.agreement),
                "first_shown_best": s.first_wins,
                "first_shown_best_expected": s.first_expected,
                "rating_rank_contradictions": s.contradictions,
            }
            for s in ctx["stats"]
        ],
        "win_rates": [
            {
                "prompt_set": ctx["set_names"].get(w.prompt_set_id),
                "newer": versions.get(w.newer),
                "older": versions.get(w.older),
                "rate": w.rate,
                "interval": list(w.interval),
                "wins": w.wins,
                "losses": w.losses,
                "ties": w.ties,
            }
            for w in ctx["wins"]
        ],
    }
