"""The train_ppo job end to end through the worker: a new inactive policy version with metrics;
cancel leaves nothing; a worker that dies mid-run is resumed from the checkpoint."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.runs import service as jobs
from app.runs.models import Job, JobMetric, ModelVersion
from tests.factories import make_job, make_model_version, make_prompt_row, make_prompt_set
from tests.trainer.conftest import assert_cancelled_without_model
from tests.trainer.ppo_fixtures import PPO_METRICS, PROMPT_TEXTS, TINY_PPO, make_models
from trainer.ppo import job as ppo_job
from trainer.ppo.job import paths_for
from trainer.worker import Worker

pytestmark = pytest.mark.slow

PARAMS = {**TINY_PPO, "iterations": 4, "sample_every": 2, "samples_shown": 2, "save_every": 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_models(tmp_path_factory.mktemp("ppo-job-models"))


def seed(session: Session, models: tuple[Path, Path], set_name: str = "ppo-prompts") -> tuple[int, int]:
    """A prompt set, an active policy and an active reward model; returns (policy id, reward id)."""
    ps = make_prompt_set(session, name=set_name)
    for text in PROMPT_TEXTS:
        session.add(make_prompt_row(ps.id, text))
    policy = make_model_version(session, kind="policy", is_active=True)
    policy.path = str(models[0])
    reward = make_model_version(session, kind="reward", is_active=True)
    reward.path = str(models[1])
    session.commit()
    return policy.id, reward.id


def worker(sessions: sessionmaker[Session]) -> Worker:
    return Worker(sessions, worker_id="ppo-test", heartbeat_seconds=3600, stale_seconds=60)


class Crash(BaseException):
    """Stands for the worker process dying: not an Exception, so nothing cleans up."""


class TestPPOJob:
    def test_registers_a_new_inactive_policy(self, sessions, models, artifacts) -> None:
        with sessions() as s:
            policy_id, reward_id = seed(s, models)
            job_id = make_job(s, kind="train_ppo", params={**PARAMS, "sets": ["ppo-prompts"]}).id
            s.commit()
        worker(sessions).run(burst=True)
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job.status == "succeeded", job.error
            mv = s.get(ModelVersion, job.result["model_version_id"])
            assert mv.kind == "policy" and mv.parent_id == policy_id and mv.job_id == job_id
            assert not mv.is_active
            assert s.get(ModelVersion, policy_id).is_active  # promoting is a separate step
            assert mv.config["reward_version_id"] == reward_id and mv.config["iterations"] == 4
            assert {"mean_reward", "first_mean_reward", "kl"} <= set(mv.metrics)
            assert Path(mv.path, "config.json").is_file()
            names = set(s.scalars(select(JobMetric.name).where(JobMetric.job_id == job_id)))
            assert names >= PPO_METRICS
            assert len(job.result["samples"]) == 4 and "response" in job.result["samples"][0]
        assert not paths_for(job_id)[1].exists()

    def test_unknown_set_and_missing_reward_model_fail_clearly(self, sessions, models, artifacts) -> None:
        with sessions() as s:
            seed(s, models)
            bad = make_job(s, kind="train_ppo", params={**PARAMS, "sets": ["nope"]}).id
            typo = make_job(s, kind="train_ppo", params={"iteratons": 3}).id
            s.commit()
        worker(sessions).run(burst=True)
        with sessions() as s:
            assert "no prompt set named 'nope'" in s.get(Job, bad).error
            assert "unknown parameter(s) iteratons" in s.get(Job, typo).error
            s.execute(update(ModelVersion).where(ModelVersion.kind == "reward").values(is_active=False))
            none = make_job(s, kind="train_ppo", params=PARAMS).id
            s.commit()
        worker(sessions).run(burst=True)
        with sessions() as s:
            assert "no active reward model" in s.get(Job, none).error

    def test_cancel_leaves_no_model(self, sessions, models, artifacts, monkeypatch) -> None:
        with sessions() as s:
            seed(s, models)
            job_id = make_job(s, kind="train_ppo", params=PARAMS).id
            s.commit()
        real_metric = ppo_job.JobReporter.metric

        def cancel_at_two(self, step: int, **values: float) -> None:
            real_metric(self, step, **values)
            if step == 2:  # someone presses Cancel while iteration 2 finishes
                with self.ctx.session() as s:
                    jobs.request_cancel(session=s, job=s.get(Job, self.ctx.job_id))

        monkeypatch.setattr(ppo_job.JobReporter, "metric", cancel_at_two)
        worker(sessions).run(burst=True)
        assert_cancelled_without_model(sessions, job_id, paths_for)

    def test_a_dead_worker_is_resumed_from_the_checkpoint(
        self, sessions, models, artifacts, monkeypatch
    ) -> None:
        with sessions() as s:
            seed(s, models)
            job_id = make_job(s, kind="train_ppo", params=PARAMS).id
            s.commit()
        real_progress = ppo_job.JobReporter.progress
        crashed = []

        def die_after_three(self, fraction: float, message: str) -> None:
            if message.startswith("iteration 3/") and not crashed:
                crashed.append(True)
                raise Crash()
            real_progress(self, fraction, message)

        monkeypatch.setattr(ppo_job.JobReporter, "progress", die_after_three)
        with pytest.raises(Crash):
            worker(sessions).run_one()
        assert (paths_for(job_id)[1] / "checkpoint" / "state.pt").is_file()
        with sessions() as s:
            s.execute(
                update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(minutes=10))
            )
            assert jobs.requeue_stale(session=s, stale_seconds=60) == 1
            s.commit()
        worker(sessions).run(burst=True)
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job.status == "succeeded", job.error
            assert job.result["resumed_from"] == 2
            assert "resumed from the checkpoint of iteration 2" in job.log
            steps = list(
                s.scalars(
                    select(JobMetric.step)
                    .where(JobMetric.job_id == job_id, JobMetric.name == "mean_reward")
                    .order_by(JobMetric.step)
                )
            )
            assert steps == [1, 2, 3, 4]  # the lost iteration 3 was redone, not drawn twice
            assert s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id)) is not None
