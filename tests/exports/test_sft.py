"""`ranklab export sft`: one row per demonstration that counts, in TRL SFTTrainer's shape, with the
other exports' split, pseudonyms and manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.cli import cli
from app.exports import formats
from app.exports.filters import ExportError, Filters, pseudonym
from app.prompts.models import PromptSet
from app.ranking import split_of
from tests.exports.data import SECRET, read_rows, run_export
from tests.factories import bearer, make_demonstration, make_prompt_set, make_user


@dataclass
class Demos:
    ps: PromptSet
    other: PromptSet
    alice_id: int


def build(session: Session) -> Demos:
    """Set "demos" (train_on not_rejected): an unreviewed, an accepted with a reviewer's edit, a
    rejected, a skip, a multi-turn one drafted from the policy; set "strict" (train_on accepted):
    one unreviewed, one accepted."""
    ps = make_prompt_set(session, name="demos", k=1)
    ps.kind = "demonstration"
    strict = make_prompt_set(session, name="strict", k=1)
    strict.kind, strict.train_on = "demonstration", "accepted"
    alice, bob = make_user(session, username="dana"), make_user(session, username="eve")
    make_demonstration(session, prompt_set=ps, user=alice, prompt="Say hi.", reply="Hi there!")
    make_demonstration(
        session,
        prompt_set=ps,
        user=bob,
        prompt="Name a colour.",
        reply="Blue",
        review_status="accepted",
        edited_reply="Blue, like the sky.",
    )
    make_demonstration(
        session, prompt_set=ps, user=bob, prompt="Be rude.", reply="No.", review_status="rejected"
    )
    make_demonstration(session, prompt_set=ps, user=alice, prompt="Unclear?", skip_reason="unclear")
    make_demonstration(
        session,
        prompt_set=ps,
        user=alice,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
        reply="6",
        draft_used=True,
        edit_distance=3,
    )
    make_demonstration(session, prompt_set=strict, user=bob, prompt="Count to 2.", reply="1, 2")
    make_demonstration(
        session, prompt_set=strict, user=bob, prompt="Count to 3.", reply="1, 2, 3", review_status="accepted"
    )
    session.flush()
    return Demos(ps=ps, other=strict, alice_id=alice.id)


class TestRows:
    def test_one_row_per_demonstration_that_counts(self, session: Session) -> None:
        d = build(session)
        data, manifest = run_export(session, "sft")
        rows = read_rows(data, "jsonl")
        replies = [r["messages"][-1]["content"] for r in rows]
        # rejected, skipped and the strict set's unreviewed one are out; the reviewer's edit wins
        assert replies == ["Hi there!", "Blue, like the sky.", "6", "1, 2, 3"]
        for r in rows:
            assert r["messages"][-1]["role"] == "assistant"
            assert r["split"] == split_of(_prompt_text(r["messages"][:-1]))
        first, edited, multi, strict = rows
        assert first["messages"] == [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi there!"},
        ]
        assert first["labeler"] == pseudonym(d.alice_id, SECRET) and first["prompt_set"] == "demos"
        assert (first["review_status"], first["draft_used"], first["edited_by_reviewer"]) == (
            "unreviewed",
            False,
            False,
        )
        assert edited["edited_by_reviewer"] and edited["review_status"] == "accepted"
        assert [m["role"] for m in multi["messages"]] == ["system", "user", "assistant", "user", "assistant"]
        assert (multi["draft_used"], multi["edit_distance"], multi["guideline_version"]) == (True, 3, 1)
        assert strict["prompt_set"] == "strict"
        assert manifest["format"] == "sft" and manifest["counts"]["rows"] == 4
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["columns"][0] == "messages" and set(manifest["columns"]) == set(first)

    @pytest.mark.parametrize("train_on", ["all", "accepted"])
    def test_the_sets_train_on_decides(self, session: Session, train_on: str) -> None:
        d = build(session)
        d.ps.train_on = train_on
        session.flush()
        rows = read_rows(run_export(session, "sft", filters=Filters(prompt_set_ids=[d.ps.id]))[0], "jsonl")
        replies = {r["messages"][-1]["content"] for r in rows}
        expected = (
            {"Hi there!", "Blue, like the sky.", "No.", "6"} if train_on == "all" else {"Blue, like the sky."}
        )
        assert replies == expected

    def test_split_filter_and_parquet(self, session: Session) -> None:
        build(session)
        everything = read_rows(run_export(session, "sft")[0], "jsonl")
        for split in ("train", "validation", "test"):
            data, manifest = run_export(session, "sft", "parquet", filters=Filters(split=split))
            rows = read_rows(data, "parquet")
            assert rows == [r for r in everything if r["split"] == split]
            assert manifest["counts"]["rows"] == len(rows)

    def test_ranking_only_filters_are_refused(self, session: Session) -> None:
        with pytest.raises(ExportError, match="policy: does not apply to sft"):
            run_export(session, "sft", filters=Filters(policy_version_ids=[1]))
        with pytest.raises(ExportError, match="exclude_flagged"):
            run_export(session, "sft", filters=Filters(exclude_flagged=True))


def _prompt_text(messages: list[dict[str, str]]) -> str:
    from app.chat import as_text, parse_conversation

    return as_text(parse_conversation(messages))


def test_the_cli_writes_a_file_datasets_and_trl_read(cli_db: sessionmaker[Session], tmp_path: Path) -> None:
    with cli_db.begin() as s:
        build(s)
    out = tmp_path / "sft.jsonl"
    res = CliRunner().invoke(cli, ["export", "sft", "--set", "demos", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 3 demonstrations" in res.output
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 3 and ds[0]["messages"][-1] == {"role": "assistant", "content": "Hi there!"}
    # TRL's own test of the conversational shape (what SFTTrainer checks before applying a template)
    trl_utils = pytest.importorskip("trl.data_utils")
    assert all(trl_utils.is_conversational(row) for row in ds)


def test_the_api_streams_it_and_its_manifest(client: TestClient, session: Session) -> None:
    from app.auth import service as auth

    d = build(session)
    token = auth.create_token(session=session, user=make_user(session, role="researcher")).token
    res = client.get(f"/api/v1/exports/sft?set={d.ps.id}", headers=bearer(token))
    assert res.status_code == 200, res.text
    rows = [json.loads(line) for line in res.text.splitlines()]
    assert len(rows) == 3
    man = client.get("/api/v1/exports/sft/manifest", headers=bearer(token)).json()
    assert man["counts"]["rows"] == 4 and man["format"] == "sft"
    bad = client.get("/api/v1/exports/sft?exclude_flagged=1", headers=bearer(token))
    assert bad.status_code == 422 and "exclude_flagged" in bad.text


def test_export_service_knows_the_format() -> None:
    assert "sft" in formats.FORMATS


def test_a_demonstration_written_through_the_api_is_in_the_export_with_the_reply_last(
    client: TestClient, session: Session
) -> None:
    """Issue 15's done-when, end to end over HTTP: a labeler writes the reply through the labeling
    API and a researcher's `export sft` holds it, the conversation first and the reply last."""
    from app.auth import service as auth
    from tests.factories import make_task

    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ]
    ps = make_prompt_set(session, name="written", k=1, kind="demonstration")
    make_task(session, prompt_set=ps, messages=conversation)
    labeler = auth.create_token(session=session, user=make_user(session)).token
    researcher = auth.create_token(session=session, user=make_user(session, role="researcher")).token
    session.commit()
    task = client.get("/api/v1/tasks/next", headers=bearer(labeler)).json()
    assert task["kind"] == "demonstration" and task["messages"] == conversation
    sent = client.post(
        f"/api/v1/assignments/{task['assignment_id']}/demonstration",
        headers=bearer(labeler),
        json={"reply": "Green.", "draft_completion_id": None},
    )
    assert sent.status_code == 200, sent.text
    res = client.get(f"/api/v1/exports/sft?set={ps.id}", headers=bearer(researcher))
    (row,) = [json.loads(line) for line in res.text.splitlines()]
    assert row["messages"] == [*conversation, {"role": "assistant", "content": "Green."}]
    assert row["review_status"] == "unreviewed" and row["draft_used"] is False
