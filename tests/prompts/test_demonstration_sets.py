"""Demonstration sets through `ranklab prompts import --kind`, the upload API and the set page."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth
from app.cli import cli
from app.labeling.models import Task
from app.prompts.models import PromptSet
from app.runs.models import Job
from tests.factories import bearer, login, make_user


def test_the_cli_imports_a_demonstration_set_with_its_tasks_open(
    cli_db: sessionmaker[Session], tmp_path: Path
) -> None:
    f = tmp_path / "asks.jsonl"
    f.write_text('{"prompt": "Write a limerick."}\n{"messages": [{"role": "user", "content": "Hi"}]}\n')
    args = ["prompts", "import", str(f), "--name", "write 1", "--kind", "demonstration", "--overlap", "2"]
    result = CliRunner().invoke(cli, args, prog_name="ranklab")
    assert result.exit_code == 0, result.output
    assert "2 demonstration tasks are open for labelers now" in result.output and "draft job" in result.output
    with cli_db() as s:
        ps = s.scalars(select(PromptSet)).one()
        assert (ps.kind, ps.status, ps.overlap) == ("demonstration", "active", 2)
        tasks = list(s.scalars(select(Task)))
        assert (
            len(tasks) == 2
            and {t.status for t in tasks} == {"open"}
            and all(not t.completions for t in tasks)
        )
        job = s.get(Job, ps.report["job_id"])
        assert job is not None and job.kind == "sample" and job.status == "queued"
        if s.get_bind().dialect.name == "postgresql":  # the planner knows the new open tasks at once
            assert s.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'task'::regclass")) == 2
    listed = CliRunner().invoke(cli, ["prompts", "list"], prog_name="ranklab")
    assert "demonstration overlap=2 0/4 written, 0/2 drafts" in listed.output
    bad = CliRunner().invoke(cli, [*args[:4], "other", "--kind", "essay"], prog_name="ranklab")
    assert bad.exit_code == 2 and "'essay' is not one of 'ranking', 'demonstration'" in bad.output


def test_the_upload_api_takes_a_kind_and_names_a_bad_one(client: TestClient, session: Session) -> None:
    admin = make_user(session, role="admin")
    h = bearer(auth.create_token(session=session, user=admin, name="t").token)
    files = {"file": ("p.csv", b"prompt\nOne\nTwo\n", "text/csv")}
    r = client.post("/api/v1/sets", headers=h, data={"name": "demo", "kind": "demonstration"}, files=files)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "demonstration" and body["status"] == "active"
    assert body["progress"]["demonstrations_written"] == 0 and body["progress"]["demonstrations_needed"] == 2
    bad = client.post("/api/v1/sets", headers=h, data={"name": "other", "kind": "essay"}, files=files)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "kind"
    assert session.scalars(select(PromptSet.name)).all() == ["demo"]
    login(client, admin)
    page = client.get(f"/sets/{body['id']}").text
    assert "0 / 2 demonstrations written" in page and "Demonstrations: labelers write the reply" in page
    assert 'value="demonstration"' in client.get("/sets/new").text
