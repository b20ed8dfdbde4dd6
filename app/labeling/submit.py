"""A ranking task's outcomes: a ranking (ranks, 1-7 ratings, flags, notes), checked and stored
whole, or a skip with its reason (the skip serves demonstration tasks too). The assignment's
finish, lease and replay are finish.py's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from app import ranking
from app.db import utcnow
from app.labeling.finish import (
    Finished,
    SubmissionInvalid,
    check_notes,
    complete,
    honour_lease,
    late,
    store_annotation,
)
from app.labeling.models import Annotation, Assignment, AssignmentState
from app.labeling.task_view import letter
from app.prompts.models import SetKind

SKIP_REASONS: dict[str, str] = {
    "unclear": "The instruction is unclear",
    "harmful": "The instruction is harmful",
    "broken": "The outputs are broken",
    "other": "Other (say why in the notes)",
}
RATING_MIN, RATING_MAX = 1, 7


def inconsistencies(ranks: dict[int, int], ratings: dict[int, int]) -> list[tuple[int, int]]:
    """Pairs (better, worse) where the lower-ranked output has a strictly higher rating."""
    items = [ranking.Item(cid, r, ratings.get(cid)) for cid, r in ranks.items()]
    return [(p.chosen.completion_id, p.rejected.completion_id) for p in ranking.contradictions(items)]


def _as_int_key(key: Any, fld: str, valid: set[int]) -> int:
    try:
        cid = int(key)
    except (TypeError, ValueError):
        raise SubmissionInvalid(fld, f"{key!r} is not a completion id") from None
    if cid not in valid:
        raise SubmissionInvalid(fld, f"completion {cid} is not part of this task")
    return cid


def _validate(
    *, completion_ids: list[int], set_flags: list[str], ranks: Any, ratings: Any, flags: Any
) -> tuple[dict[int, int], dict[int, int], dict[int, list[str]]]:
    valid = set(completion_ids)
    k = len(completion_ids)
    if not isinstance(ranks, dict) or not ranks:
        raise SubmissionInvalid("ranks", "give a rank for every output (1 = best, ties share a rank)")
    clean_ranks: dict[int, int] = {}
    for key, value in ranks.items():
        cid = _as_int_key(key, "ranks", valid)
        if cid in clean_ranks:
            raise SubmissionInvalid("ranks", f"completion {cid} is ranked twice")
        problem = ranking.rank_error(value, k=k)
        if problem:
            raise SubmissionInvalid(f"ranks.{cid}", problem)
        clean_ranks[cid] = value
    missing = valid - set(clean_ranks)
    if missing:
        raise SubmissionInvalid("ranks", f"every output needs a rank; missing: {sorted(missing)}")
    problem = ranking.ranking_error(list(clean_ranks.values()))
    if problem:
        raise SubmissionInvalid("ranks", problem)
    clean_ratings: dict[int, int] = {}
    if ratings is None:
        ratings = {}
    if not isinstance(ratings, dict):
        raise SubmissionInvalid("ratings", "ratings must map completion ids to 1-7")
    for key, value in ratings.items():
        cid = _as_int_key(key, "ratings", valid)
        if isinstance(value, bool) or not isinstance(value, int) or not RATING_MIN <= value <= RATING_MAX:
            raise SubmissionInvalid(f"ratings.{cid}", "rating must be a whole number from 1 to 7")
        clean_ratings[cid] = value
    missing = valid - set(clean_ratings)
    if missing:
        raise SubmissionInvalid("ratings", f"every output needs a rating 1-7; missing: {sorted(missing)}")
    clean_flags: dict[int, list[str]] = {cid: [] for cid in completion_ids}
    if flags is None:
        flags = {}
    if not isinstance(flags, dict):
        raise SubmissionInvalid("flags", "flags must map completion ids to lists of flag names")
    allowed = set(set_flags)
    for key, value in flags.items():
        cid = _as_int_key(key, "flags", valid)
        if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
            raise SubmissionInvalid(f"flags.{cid}", "flags must be a list of flag names")
        unknown = [f for f in value if f not in allowed]
        if unknown:
            raise SubmissionInvalid(f"flags.{cid}", f"not a flag of this prompt set: {unknown[0]!r}")
        clean_flags[cid] = sorted(set(value), key=set_flags.index)
    return clean_ranks, clean_ratings, clean_flags


def joined_notes(notes: str, item_notes: dict[int, str] | None, display_order: list[int]) -> str:
    """The task's notes, then one line per output note ("B: invents a date"): annotation.notes
    is one text, and the letters are the ones this labeler saw."""
    labels = {cid: letter(i) for i, cid in enumerate(display_order)}
    lines = [notes.strip()] if notes.strip() else []
    lines += [
        f"{labels.get(cid, cid)}: {note.strip()}" for cid, note in (item_notes or {}).items() if note.strip()
    ]
    return "\n".join(lines)


def _on_loaded(
    session: Session, assignment: Assignment, by_id: Callable[..., Annotation | None], **outcome: Any
) -> Annotation:
    """submit() and skip() on a loaded assignment: the by-id call, which rereads its state."""
    annotation = by_id(session=session, assignment_id=assignment.id, user_id=assignment.user_id, **outcome)
    assert annotation is not None  # the assignment is the labeler's own
    return annotation


def submit(*, session: Session, assignment: Assignment, **submission: Any) -> Annotation:
    """Store one ranking whole (submit_by_id's keywords); a second submission of the same
    assignment returns the first."""
    return _on_loaded(session, assignment, submit_by_id, **submission)


def submit_by_id(
    *,
    session: Session,
    assignment_id: int,
    user_id: int,
    ranks: Any,
    ratings: Any = None,
    flags: Any = None,
    notes: str = "",
    item_notes: dict[int, str] | None = None,
    time_spent_ms: int | None = None,
    confirm_inconsistent: bool = False,
    now: datetime | None = None,
) -> Annotation | None:
    """submit() by the assignment's id, in four statements: mark it submitted and read what
    validating needs, the annotation, its items, the task's count. None: not this labeler's."""
    now = now or utcnow()
    store = partial(
        _store,
        session,
        ranks=ranks,
        ratings=ratings,
        flags=flags,
        notes=notes,
        item_notes=item_notes,
        time_spent_ms=time_spent_ms,
        confirm_inconsistent=confirm_inconsistent,
        now=now,
    )
    return complete(session, assignment_id, user_id, AssignmentState.submitted, now, store)


def _store(
    session: Session,
    done: Finished,
    *,
    ranks: Any,
    ratings: Any,
    flags: Any,
    notes: str,
    item_notes: dict[int, str] | None,
    time_spent_ms: int | None,
    confirm_inconsistent: bool,
    now: datetime,
) -> Annotation:
    if done.kind != SetKind.ranking:
        raise SubmissionInvalid(
            "kind", "this is a demonstration task: write the reply (POST .../demonstration), not a ranking"
        )
    clean_ranks, clean_ratings, clean_flags = _validate(
        completion_ids=done.completion_ids,
        set_flags=done.set_flags,
        ranks=ranks,
        ratings=ratings,
        flags=flags,
    )
    notes = check_notes(joined_notes(check_notes(notes), item_notes, done.display_order))
    clashes = inconsistencies(clean_ranks, clean_ratings)
    if clashes and not confirm_inconsistent:
        raise SubmissionInvalid(
            "confirm_inconsistent",
            f"{len(clashes)} lower-ranked output(s) have a higher rating than one ranked above "
            "them: fix the ranks or ratings, or confirm",
        )
    honour_lease(session, done, now)
    position = {cid: i for i, cid in enumerate(done.display_order)}
    # Stored dense (competition ranks too): 1 = best, ties share a rank.
    dense = dict(zip(clean_ranks, ranking.dense_ranks(list(clean_ranks.values())), strict=True))
    items = [
        {
            "completion_id": cid,
            "rank": dense[cid],
            "rating": clean_ratings.get(cid),
            "flags": clean_flags[cid],
            "position": position.get(cid),
        }
        for cid in done.completion_ids
    ]
    annotation = store_annotation(
        session,
        done,
        notes=notes,
        time_spent_ms=time_spent_ms,
        now=now,
        items=items,
        inconsistency_confirmed=bool(clashes),
        counts=True,
    )
    return annotation


def skip(*, session: Session, assignment: Assignment, **skipping: Any) -> Annotation:
    """Store a skip with its reason (skip_by_id's keywords); it frees the task for others and
    counts no label."""
    return _on_loaded(session, assignment, skip_by_id, **skipping)


def skip_by_id(
    *,
    session: Session,
    assignment_id: int,
    user_id: int,
    reason: Any,
    notes: str = "",
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> Annotation | None:
    now = now or utcnow()
    if reason not in SKIP_REASONS:
        raise SubmissionInvalid("skip", f"reason must be one of: {', '.join(SKIP_REASONS)}")
    notes = check_notes(notes)

    def store(done: Finished) -> Annotation:
        late(session, done, now)
        return store_annotation(
            session, done, notes=notes, time_spent_ms=time_spent_ms, now=now, skip_reason=reason
        )

    return complete(session, assignment_id, user_id, AssignmentState.skipped, now, store)
