from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.runs.models import Job, ModelVersion
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
