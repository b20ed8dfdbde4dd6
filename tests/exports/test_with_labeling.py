"""Labels made through the labeling service come out of the exports as they were given."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.exports.filters import Filters
from app.labeling import service as labeling
from tests.exports.data import read_rows, run_export
from tests.factories import make_prompt_set, make_task, make_user


def test_submitted_ranking_exports_with_shown_positions(session: Session) -> None:
    ps = make_prompt_set(session, k=4, flags=["hallucination"])
    task = make_task(session, prompt_set=ps, prompt="Name three rivers.")
    user = make_user(session, username="river-labeler")
    a = labeling.next_assignment(session=session, user=user, lease_minutes=30)
    assert a is not None and a.task_id == task.id
    shown = list(a.display_order)  # completion ids, first shown first
    # best = the output shown last, then a tie, then the one shown first
    ranks = {shown[3]: 1, shown[1]: 2, shown[2]: 2, shown[0]: 3}
    labeling.submit(
        session=session,
        assignment=a,
        ranks=ranks,
        ratings={shown[3]: 7, shown[1]: 5, shown[2]: 5, shown[0]: 2},
        flags={shown[0]: ["hallucination"]},
        time_spent_ms=12_000,
    )
    f = Filters(prompt_set_ids=[ps.id])
    (row,) = read_rows(run_export(session, "rankings", filters=f)[0], "jsonl")
    by_id = {c["completion_id"]: c for c in row["completions"]}
    assert [by_id[c]["position"] for c in shown] == [0, 1, 2, 3]
    assert [by_id[c]["rank"] for c in shown] == [3, 2, 2, 1]
    assert by_id[shown[0]]["flags"] == ["hallucination"]
    trl = read_rows(run_export(session, "trl", filters=f)[0], "jsonl")
    assert len(trl) == 5  # C(4,2) = 6 minus the tie
    text = {c.id: c.text for c in task.completions}
    assert trl[0]["prompt"] == "Name three rivers."
    assert {"prompt": "Name three rivers.", "chosen": text[shown[3]], "rejected": text[shown[0]]} in trl
    comp = read_rows(run_export(session, "comparisons", filters=f)[0], "jsonl")
    best = next(
        r for r in comp if r["chosen_completion_id"] == shown[3] and r["rejected_completion_id"] == shown[0]
    )
    assert (best["chosen_position"], best["rejected_position"], best["rank_gap"], best["rating_diff"]) == (
        3,
        0,
        2,
        5,
    )
    assert sum(r["tie"] for r in comp) == 1
