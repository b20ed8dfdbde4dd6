"""The checks every training job passes, for the reward model's and SFT's job tests: a worker
that dies after a checkpoint resumes from it (no metric point twice), and a cancel leaves no
model version; TrainingJobChecks runs both as tests of a job's test class."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import trainer.loop as loop
from app.db import utcnow
from app.runs import service as jobs
from app.runs.models import Job, JobMetric, ModelVersion
from trainer.worker import Worker

RunWorker = Callable[[], int]


def worker(sessions: sessionmaker[Session]) -> Worker:
    # Beats only when asked: the test's sessions share one connection, which threads must not.
    return Worker(sessions, worker_id="test-worker", heartbeat_seconds=3600, stale_seconds=60)


def resumes_after_the_worker_died(
    sessions: sessionmaker[Session], job_id: int, monkeypatch: pytest.MonkeyPatch, run: RunWorker, *, at: int
) -> None:
    """The job dies just after its first checkpoint (step `at`), is found stale, claimed again
    and resumes there."""
    real = loop.save_checkpoint

    def save_then_die(work_dir: Path, **kw: Any) -> None:
        real(work_dir, **kw)
        raise RuntimeError("worker killed")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    run()
    with sessions() as s:
        assert s.get(Job, job_id).status == "failed"
        # As if the process had died instead: still `running`, heartbeat long stale.
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="running", heartbeat_at=utcnow() - timedelta(hours=1), error=None, finished_at=None
            )
        )
        s.commit()
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert run() == 1  # requeued as stale, claimed again
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        assert job.attempts == 2 and job.result["metrics"]["resumed_from_step"] == at
        steps = list(
            s.scalars(
                select(JobMetric.step)
                .where(JobMetric.job_id == job_id, JobMetric.name == "train_loss")
                .order_by(JobMetric.id)
            )
        )
        assert steps == list(range(1, job.result["metrics"]["steps"] + 1))  # none twice
        assert f"resumed from checkpoint at step {at}" in job.log


def cancel_leaves_no_version(
    sessions: sessionmaker[Session], job_id: int, monkeypatch: pytest.MonkeyPatch, run: RunWorker
) -> None:
    """Cancel asked for just after the first checkpoint: the job ends cancelled, registering nothing."""
    real = loop.save_checkpoint

    def save_then_cancel(work_dir: Path, **kw: Any) -> None:
        real(work_dir, **kw)
        with sessions() as s:
            jobs.request_cancel(session=s, job=s.get(Job, job_id))
            s.commit()

    monkeypatch.setattr(loop, "save_checkpoint", save_then_cancel)
    run()
    with sessions() as s:
        assert s.get(Job, job_id).status == "cancelled"
        assert s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id)) is None


class TrainingJobChecks:
    """Both checks as tests of a training job's test class (TestRewardJob, TestSFTJob), which
    sets `paths` (its job module's paths_for); its module gives a `queued` fixture (a job queued
    with a private artifacts folder: its id)."""

    @staticmethod
    def paths(job_id: int) -> tuple[Path, Path]:
        """(output, work) folders of a job id."""
        raise NotImplementedError

    def test_resumes_from_the_checkpoint_after_the_worker_died(
        self, sessions: sessionmaker[Session], queued: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with sessions() as s:
            first_checkpoint = s.get(Job, queued).params["checkpoint_every"]
        resumes_after_the_worker_died(
            sessions, queued, monkeypatch, lambda: worker(sessions).run(burst=True), at=first_checkpoint
        )

    def test_cancel_leaves_no_model(
        self, sessions: sessionmaker[Session], queued: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cancel_leaves_no_version(sessions, queued, monkeypatch, lambda: worker(sessions).run(burst=True))
        out_dir, work_dir = self.paths(queued)
        assert not out_dir.exists() and not work_dir.exists()
        assert not list(out_dir.parent.glob("*"))  # no half-written folder of its kind either
