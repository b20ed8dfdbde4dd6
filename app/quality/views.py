"""The quality page (/quality) and its JSON twin (/api/v1/quality). Researchers and admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from app.auth.deps import CurrentResearcher, Forbidden
from app.auth.models import Role, User
from app.db import SessionDep
from app.demonstrations import service as demonstrations
from app.exports.filters import pseudonym
from app.exports.views import TRUE, filter_choices, parse_ids
from app.prompts.models import PromptSet
from app.quality import service as quality
from app.quality.charts import Bar, bar_chart
from app.runs.models import ModelVersion
from app.web import render

router = APIRouter(tags=["quality"])
api = APIRouter(tags=["quality"])


Sets = Annotated[
    list[str],
    Query(alias="set", default_factory=list, description="Prompt set ids (repeatable); default all"),
]
RealNames = Annotated[str, Query(description="1: usernames instead of pseudonyms (admins)")]


@router.get("/quality")
def quality_page(
    request: Request,
    user: CurrentResearcher,
    session: SessionDep,
    sets: Sets,
    real_names: RealNames = "",
) -> Response:
    set_ids = parse_ids(sets, "set")
    show_names = real_names.lower() in TRUE and user.role == Role.admin
    ctx = filter_choices(session) | quality_context(
        session=session, set_ids=set_ids, show_names=show_names, secret=request.app.state.settings.secret_key
    )
    ctx.update(selected=set_ids, show_names=show_names)
    return render(request, "quality/quality.html", ctx, block="results")


def quality_context(*, session: Any, set_ids: list[int], show_names: bool, secret: str) -> dict[str, Any]:
    anns = quality.load(session=session, prompt_set_ids=set_ids)
    overall, _ = quality.agreement(anns)
    stats = quality.labeler_stats(anns)
    names = dict(session.execute(select(User.id, User.username)).all()) if show_names else {}
    versions = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    set_names = dict(session.execute(select(PromptSet.id, PromptSet.name)).all())

    def who(uid: int) -> str:
        return names.get(uid) or pseudonym(uid, secret)

    wins = quality.win_rates(anns, newer_than=quality.version_order(session=session))
    labeled = [s for s in stats if s.annotations]
    return {
        "demo_stats": demonstrations.labeler_stats(session=session, set_ids=set_ids),
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


@api.get("/quality", summary="Agreement, labeler statistics and policy win rates")
def api_quality(
    request: Request,
    user: CurrentResearcher,
    session: SessionDep,
    sets: Sets,
    real_names: RealNames = "",
) -> dict[str, Any]:
    """The figures of the /quality page as JSON. Query: set=ID (repeatable; default all),
    real_names=1 (admins). Rates are shares in [0, 1]; intervals are 95% Wilson intervals.
    `demonstrations`: per labeler, acceptance rate = accepted / reviewed (None before any
    review), median time spent, median length of the labeler's reply in characters."""
    real = real_names.lower() in TRUE
    if real and user.role != Role.admin:
        raise Forbidden("Real labeler names are for admins; labelers are named by pseudonym.")
    set_ids = parse_ids(sets, "set")
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
        "demonstrations": [
            {
                "labeler": who(d.user_id),
                "demonstrations": d.demonstrations,
                "accepted": d.accepted,
                "rejected": d.rejected,
                "acceptance_rate": d.acceptance_rate,
                "median_time_s": d.median_time_s,
                "median_reply_chars": d.median_chars,
            }
            for d in ctx["demo_stats"]
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
