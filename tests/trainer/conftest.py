from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.cli import cli
from app.config import get_settings
from app.runs.models import Job, ModelVersion
from tests.factories import login, make_prompt_set, make_user, words
from tests.trainer.ppo_fixtures import one_thread


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private artifacts folder for a job test, with the sampling settings pinned to their
    defaults (a developer's own RANKLAB_POLICY_MODEL must not leak in), on one torch thread."""
    monkeypatch.setenv("RANKLAB_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("RANKLAB_POLICY_MODEL", raising=False)
    monkeypatch.setenv("RANKLAB_SAMPLING_BACKEND", "local")
    get_settings.cache_clear()
    with one_thread():
        yield tmp_path / "artifacts"
    get_settings.cache_clear()


@pytest.fixture
def env(cli_db: sessionmaker[Session]) -> sessionmaker[Session]:
    return cli_db


def assert_cancelled_without_model(
    sessions: sessionmaker[Session], job_id: int, paths_for: Callable[[int], tuple[Path, Path]]
) -> None:
    """A cancelled training job: no model version, neither its output nor its work folder."""
    with sessions() as s:
        assert s.get(Job, job_id).status == "cancelled"
        assert s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id)) is None
    out_dir, work_dir = paths_for(job_id)
    assert not out_dir.exists() and not work_dir.exists()


def queue_with_cli(sessions: sessionmaker[Session], line: str) -> Job:
    """`ranklab LINE` with a set named round-1 in the database: the one job it queued, after
    checking that the command said so."""
    with sessions.begin() as s:
        make_prompt_set(s, name="round-1")
    out = CliRunner().invoke(cli, words(line))
    assert out.exit_code == 0, out.output
    with sessions() as s:
        job = s.scalar(select(Job))
    assert job is not None and job.status == "queued", out.output
    assert f"queued job {job.id}" in out.output
    return job


def assert_form_refused(
    client: TestClient, session: Session, path: str, fields: dict[str, object], reasons: list[str]
) -> None:
    """A researcher posts `fields` to the job form at `path`: 422 with each of `reasons` on the
    page, and no job queued."""
    csrf = login(client, make_user(session, role="researcher"))
    r = client.post(path, data={"csrf_token": csrf, **fields})
    assert r.status_code == 422
    for reason in reasons:
        assert reason in r.text
    assert session.scalar(select(Job)) is None


def submit_form(
    client: TestClient, session: Session, path: str, fields: dict[str, object]
) -> tuple[str, Job]:
    """A researcher opens the job form at `path` and submits `fields`: the form page's text and
    the job it queued (the answer redirects to that job's page)."""
    csrf = login(client, make_user(session, role="researcher"))
    page = client.get(path)
    assert page.status_code == 200
    r = client.post(path, data={"csrf_token": csrf, **fields}, follow_redirects=False)
    assert r.status_code == 303, r.text
    job = session.scalar(select(Job).order_by(Job.id.desc()))
    assert job is not None and r.headers["location"] == f"/runs/{job.id}"
    return page.text, job
