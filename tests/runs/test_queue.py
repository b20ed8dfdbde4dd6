"""The job queue's service functions, on SQLite and PostgreSQL (rolled-back transactions)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.runs import service as jobs
from app.runs.models import Job, JobStatus
from tests.factories import make_job


def _age_heartbeat(session: Session, job: Job, seconds: float) -> None:
    session.execute(
        update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
    )
    session.expire(job)


class TestEnqueueAndClaim:
    def test_enqueue_makes_a_queued_job_with_the_default_attempts(self, session: Session) -> None:
        job = make_job(session, kind="noop", params={"x": 1})
        assert (job.status, job.params, job.attempts, job.max_attempts) == ("queued", {"x": 1}, 0, 3)

    def test_claims_oldest_first_and_marks_it_running(self, session: Session) -> None:
        first, second = make_job(session), make_job(session)
        got = jobs.claim(session=session, worker_id="w1")
        assert got is not None and got.id == first.id
        assert (got.status, got.worker_id, got.attempts) == ("running", "w1", 1)
        assert got.started_at is not None and got.heartbeat_at is not None
        assert "attempt 1 on w1" in got.log
        again = jobs.claim(session=session, worker_id="w2")
        assert again is not None and again.id == second.id
        assert jobs.claim(session=session, worker_id="w3") is None

    def test_claim_only_takes_the_kinds_asked_for(self, session: Session) -> None:
        make_job(session, kind="sample")
        train = make_job(session, kind="train_reward")
        got = jobs.claim(session=session, worker_id="w", kinds=["train_reward"])
        assert got is not None and got.id == train.id
        assert jobs.claim(session=session, worker_id="w", kinds=["train_reward"]) is None


class TestProgressAndMetrics:
    def test_progress_is_clamped_and_beats_the_heart(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="w")
        _age_heartbeat(session, job, 300)
        jobs.set_progress(session=session, job_id=job.id, fraction=1.7, message="almost")
        session.refresh(job)
        assert (job.progress, job.message) == (1.0, "almost")
        assert job.heartbeat_at is not None and (utcnow() - job.heartbeat_at).total_seconds() < 60

    def test_metrics_come_back_by_name_in_step_order(self, session: Session) -> None:
        job = make_job(session)
        jobs.add_metrics(session=session, job_id=job.id, step=2, values={"loss": 0.5, "acc": 0.7})
        jobs.add_metrics(session=session, job_id=job.id, step=1, values={"loss": 0.9})
        assert jobs.metrics(session=session, job_id=job.id) == {
            "acc": [(2, 0.7)],
            "loss": [(1, 0.9), (2, 0.5)],
        }

    def test_complete_and_fail_record_result_and_reason(self, session: Session) -> None:
        ok, bad = make_job(session), make_job(session)
        jobs.complete(session=session, job=ok, result={"n": 3})
        jobs.fail(session=session, job=bad, error="out of memory")
        assert (ok.status, ok.result, ok.progress) == ("succeeded", {"n": 3}, 1.0)
        assert (bad.status, bad.error) == ("failed", "out of memory")
        assert jobs.queue_counts(session=session) == {"succeeded": 1, "failed": 1}


class TestCancel:
    def test_a_queued_job_is_cancelled_at_once_and_never_claimed(self, session: Session) -> None:
        job = make_job(session)
        jobs.request_cancel(session=session, job=job)
        assert job.status == JobStatus.cancelled and job.finished_at is not None
        assert jobs.claim(session=session, worker_id="w") is None

    def test_a_running_job_is_only_flagged(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="w")
        session.refresh(job)
        jobs.request_cancel(session=session, job=job)
        assert job.status == JobStatus.running
        assert jobs.is_cancel_requested(session=session, job_id=job.id)

    def test_a_finished_job_stays_as_it_was(self, session: Session) -> None:
        job = make_job(session)
        jobs.complete(session=session, job=job)
        jobs.request_cancel(session=session, job=job)
        assert job.status == JobStatus.succeeded and not job.cancel_requested


class TestChains:
    def test_a_dependent_waits_for_its_predecessor_to_succeed(self, session: Session) -> None:
        first = make_job(session, kind="train_reward")
        second = make_job(session, kind="train_ppo", after=first)
        assert second.after_id == first.id
        got = jobs.claim(session=session, worker_id="w")
        assert got is not None and got.id == first.id
        assert jobs.claim(session=session, worker_id="w") is None  # waits: first still running
        jobs.complete(session=session, job=got)
        got2 = jobs.claim(session=session, worker_id="w")
        assert got2 is not None and got2.id == second.id

    def test_a_failed_predecessor_fails_the_whole_chain_with_the_reason(self, session: Session) -> None:
        a = make_job(session, kind="train_reward")
        b = make_job(session, kind="train_ppo", after=a)
        c = make_job(session, kind="sample", after=b)
        jobs.claim(session=session, worker_id="w")
        jobs.fail(session=session, job=a, error="CUDA out of memory")
        assert jobs.fail_broken_chains(session=session) == 2
        assert b.status == c.status == JobStatus.failed
        assert f"job {a.id} (train_reward), failed: CUDA out of memory" in (b.error or "")
        assert f"job {b.id}" in (c.error or "")
        assert jobs.claim(session=session, worker_id="w") is None

    def test_a_cancelled_predecessor_fails_the_dependent(self, session: Session) -> None:
        a = make_job(session)
        b = make_job(session, after=a)
        jobs.request_cancel(session=session, job=a)
        jobs.fail_broken_chains(session=session)
        assert b.status == JobStatus.failed and "cancelled" in (b.error or "")


class TestStaleJobs:
    def test_a_stale_job_is_requeued_and_the_old_worker_loses_it(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="dead")
        _age_heartbeat(session, job, 600)
        assert jobs.requeue_stale(session=session, stale_seconds=120) == 1
        session.refresh(job)
        assert job.status == JobStatus.queued and job.worker_id is None
        assert "requeued: worker dead stopped answering" in job.log
        again = jobs.claim(session=session, worker_id="alive")
        assert again is not None and again.id == job.id and again.attempts == 2
        assert not jobs.heartbeat(session=session, job_id=job.id, worker_id="dead")
        assert jobs.heartbeat(session=session, job_id=job.id, worker_id="alive")

    def test_a_fresh_heartbeat_is_left_alone(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="w")
        assert jobs.requeue_stale(session=session, stale_seconds=120) == 0
        session.refresh(job)
        assert job.status == JobStatus.running

    def test_out_of_attempts_fails_with_the_reason(self, session: Session) -> None:
        job = make_job(session, max_attempts=2)
        for worker in ("w1", "w2"):
            assert jobs.claim(session=session, worker_id=worker) is not None
            _age_heartbeat(session, job, 600)
            jobs.requeue_stale(session=session, stale_seconds=120)
        session.refresh(job)
        assert job.status == JobStatus.failed
        assert job.error is not None and "worker w2 stopped answering" in job.error
        assert "gave up after 2 attempts" in job.error

    def test_a_stale_job_with_a_cancel_request_ends_cancelled(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="w")
        session.refresh(job)
        jobs.request_cancel(session=session, job=job)
        _age_heartbeat(session, job, 600)
        jobs.requeue_stale(session=session, stale_seconds=120)
        session.refresh(job)
        assert job.status == JobStatus.cancelled


class TestRelease:
    def test_a_stopping_worker_gives_the_job_back_without_using_an_attempt(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="w")
        session.refresh(job)
        jobs.release(session=session, job=job, reason="worker w was stopped")
        assert (job.status, job.attempts, job.worker_id) == ("queued", 0, None)
        assert job.message == "requeued: worker w was stopped"
        again = jobs.claim(session=session, worker_id="w2")
        assert again is not None and again.id == job.id and again.attempts == 1

    def test_a_released_job_with_a_cancel_request_ends_cancelled(self, session: Session) -> None:
        job = make_job(session)
        jobs.claim(session=session, worker_id="w")
        session.refresh(job)
        jobs.request_cancel(session=session, job=job)
        jobs.release(session=session, job=job, reason="stopped")
        assert job.status == JobStatus.cancelled
