"""What an export reads: its filters, and their parsing from the CLI's options, the query
parameters and a training job's params, each refusal naming its field (ExportError)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.errors import MAX_ROW_ID, Invalid
from app.prompts.models import PromptSet
from app.ranking import SPLIT_FRACTIONS, split_fractions_error
from app.runs.models import ModelVersion


class ExportError(Invalid):
    """A refusal naming the field (the query parameter or CLI option), shown as it is."""


@dataclass
class Filters:
    prompt_set_ids: list[int] = field(default_factory=list)
    policy_version_ids: list[int] = field(default_factory=list)  # tasks with an output of these
    since: datetime | None = None
    until: datetime | None = None
    labeler_ids: list[int] = field(default_factory=list)
    include_skipped: bool = False  # only `rankings` has rows for skipped annotations
    exclude_flagged: bool = False  # drop annotations where any output got any flag
    min_labels: int = 0  # tasks with at least this many submitted (not skipped) annotations
    split: str | None = None  # keep only this split
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"] = self.since.isoformat() if self.since else None
        out["until"] = self.until.isoformat() if self.until else None
        out["split_fractions"] = list(self.split_fractions)
        return out


def pseudonym(user_id: int, secret: str) -> str:
    """A stable labeler name that reveals nothing without the secret key."""
    digest = hmac.new(secret.encode(), f"labeler:{user_id}".encode(), hashlib.sha256).hexdigest()
    return f"L-{digest[:6]}"


def resolve_labelers(*, session: Session, names: list[str], secret: str) -> list[int]:
    """Usernames, pseudonyms ("L-3f9a2c") or ids -> user ids; an unknown one is an error."""
    if not names:
        return []
    users = list(session.execute(select(User.id, User.username)))
    by_name = {u: i for i, u in users} | {pseudonym(i, secret): i for i, _ in users}
    by_name |= {str(i): i for i, _ in users}
    out = []
    for n in names:
        n = n.strip()
        if n not in by_name:
            raise ExportError("labeler", f"no labeler called {n!r}")
        out.append(by_name[n])
    return out


def resolve_ids(
    *, session: Session, model: type[PromptSet] | type[ModelVersion], values: Sequence[str]
) -> list[int]:
    """Prompt set or model version names or ids -> ids; an unknown one is an error naming it."""
    out = []
    for v in values:
        v = str(v).strip()
        as_id = int(v) if v.isdigit() and int(v) <= MAX_ROW_ID else -1  # no DataError on PostgreSQL
        found = session.scalar(select(model.id).where(or_(model.name == v, model.id == as_id)))
        if found is None:
            field = "set" if model is PromptSet else "policy"
            raise ExportError(field, f"no {model.__tablename__.replace('_', ' ')} called {v!r}")
        out.append(found)
    return out


def parse_time(value: str | datetime | None, name: str) -> datetime | None:
    """An ISO date or time; one without a zone is UTC."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ExportError(name, f"not an ISO date or time: {value!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# The filters a job's params may carry, named as `ranklab export`'s options (see filters_from_params).
FILTER_PARAMS = (
    "sets",
    "policies",
    "labelers",
    "since",
    "until",
    "min_labels",
    "exclude_flagged",
    "split_seed",
    "split_fractions",
)


def filters_from_params(*, session: Session, params: Mapping[str, Any], secret: str) -> Filters:
    """Export filters from JSON params, with `ranklab export`'s meaning: sets and policies by
    name or id, labelers by username, pseudonym or id, since/until ISO times (UTC when no zone
    is given), min_labels, exclude_flagged, split_seed and split_fractions (a list or
    "0.9,0.05,0.05"). Every split is kept: each record carries its own. Absent params take
    the export's defaults."""

    def names(key: str) -> list[str]:
        v = params.get(key) or []
        return [str(v)] if isinstance(v, str | int) else [str(x) for x in v]

    min_labels = params.get("min_labels") or 0
    if isinstance(min_labels, bool) or not isinstance(min_labels, int) or not 0 <= min_labels <= MAX_ROW_ID:
        raise ExportError("min_labels", f"a whole number from 0 to {MAX_ROW_ID}, not {min_labels!r}")
    seed = params.get("split_seed") or 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ExportError("split_seed", f"a whole number, not {seed!r}")
    fractions = parse_fractions(params.get("split_fractions") or SPLIT_FRACTIONS, "split fractions")
    return Filters(
        prompt_set_ids=resolve_ids(session=session, model=PromptSet, values=names("sets")),
        policy_version_ids=resolve_ids(session=session, model=ModelVersion, values=names("policies")),
        since=parse_time(params.get("since"), "since"),
        until=parse_time(params.get("until"), "until"),
        labeler_ids=resolve_labelers(session=session, names=names("labelers"), secret=secret),
        exclude_flagged=bool(params.get("exclude_flagged")),
        min_labels=min_labels,
        split_seed=seed,
        split_fractions=fractions,
    )


def parse_fractions(raw: str | Sequence[float], name: str) -> tuple[float, float, float]:
    """ "0.9,0.05,0.05" or three numbers -> the split's train, validation and test shares."""
    try:
        values = tuple(float(x) for x in (raw.split(",") if isinstance(raw, str) else raw))
    except (TypeError, ValueError):
        raise ExportError(name, f"three numbers train,validation,test, not {raw!r}") from None
    problem = split_fractions_error(values)
    if problem:
        raise ExportError(name, problem)
    return values[0], values[1], values[2]
