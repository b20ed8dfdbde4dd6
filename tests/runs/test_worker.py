"""The worker loop in this process: handlers, cancel, failures, lost claims, `--burst`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.runs import service as jobs
from app.runs.models import Job, JobMetric, JobStatus
from tests.factories import make_job
from tests.runs import handlers
from trainer import runner as worker_mod
from trainer.runner import extra_handlers, register, resolve
from trainer.worker import Worker

register("t_steps", handlers.steps)
register("t_boom", handlers.boom)
register("t_record", handlers.record)


def _worker(sessions: sessionmaker[Session], name: str = "w1") -> Worker:
    # A heartbeat far in the future: the rolled-back test connection is not shared across threads.
    return Worker(sessions, worker_id=name, poll_seconds=0.01, heartbeat_seconds=3600)


def _job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


class TestRunOne:
    def test_a_handler_runs_with_progress_metrics_and_result(
        self, sessions: sessionmaker[Session], tmp_path: Path
    ) -> None:
        with sessions.begin() as s:
            job_id = make_job(s, kind="t_steps", params={"n": 4, "record": str(tmp_path / "r")}).id
        assert _worker(sessions).run(burst=True) == 1
        job = _job(sessions, job_id)
        assert (job.status, job.progress, job.result, job.message) == ("succeeded", 1.0, {"steps": 4}, "done")
        with sessions() as s:
            curves = jobs.metrics(session=s, job_id=job_id)
        assert [step for step, _ in curves["loss"]] == [0, 1, 2, 3]
        assert curves["reward"][-1] == (3, 3.0)

    def test_cancel_while_running_stops_at_the_next_step(
        self, sessions: sessionmaker[Session], tmp_path: Path
    ) -> None:
        record = tmp_path / "r"
        with sessions.begin() as s:
            job_id = make_job(s, kind="t_steps", params={"n": 10, "cancel_at": 2, "record": str(record)}).id
        _worker(sessions).run(burst=True)
        job = _job(sessions, job_id)
        assert job.status == JobStatus.cancelled and job.finished_at is not None
        # Steps 0 and 1 ran; the progress call of step 2 raised JobCancelled.
        assert [line.split(" ", 3)[3] for line in record.read_text().splitlines()] == ["step 0", "step 1"]

    def test_a_handler_that_raises_fails_the_job_with_the_reason(
        self, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as s:
            job_id = make_job(s, kind="t_boom").id
        _worker(sessions).run(burst=True)
        job = _job(sessions, job_id)
        assert job.status == JobStatus.failed
        assert job.error == "RuntimeError: the handler broke on purpose"

    def test_an_unknown_kind_fails_and_names_the_known_ones(self, sessions: sessionmaker[Session]) -> None:
        with sessions.begin() as s:
            job_id = make_job(s, kind="nonsense").id
        _worker(sessions).run(burst=True)
        job = _job(sessions, job_id)
        assert job.status == JobStatus.failed
        assert "no handler for job kind 'nonsense'" in (job.error or "")
        assert "sample" in (job.error or "")

    def test_a_chain_runs_in_order_and_stops_at_a_failure(
        self, sessions: sessionmaker[Session], tmp_path: Path
    ) -> None:
        record = tmp_path / "r"
        with sessions.begin() as s:
            a = make_job(s, kind="t_record", params={"record": str(record)})
            b = make_job(s, kind="t_boom", after=a)
            c = make_job(s, kind="t_record", params={"record": str(record)}, after=b)
            ids = (a.id, b.id, c.id)
        assert _worker(sessions).run(burst=True) == 2
        states = [_job(sessions, i).status for i in ids]
        assert states == ["succeeded", "failed", "failed"]
        assert f"job {ids[1]} (t_boom), failed: RuntimeError" in (_job(sessions, ids[2]).error or "")
        assert len(record.read_text().splitlines()) == 1

    def test_a_worker_that_lost_its_claim_does_not_finish_the_job(
        self, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as s:
            job_id = make_job(s, kind="t_steps", params={"n": 3}).id

        def steal(ctx: worker_mod.JobContext) -> None:
            # Another worker took the job over while this one was stalled.
            with ctx.session() as s:
                job = s.get(Job, ctx.job_id)
                assert job is not None
                job.worker_id = "other"
            ctx.progress(0.5, "still here?")

        register("t_steal", steal)
        with sessions.begin() as s:
            s.get(Job, job_id).kind = "t_steal"  # type: ignore[union-attr]
        _worker(sessions).run(burst=True)
        job = _job(sessions, job_id)
        assert (job.status, job.worker_id) == ("running", "other")
        assert job.message == "started"  # the loser wrote no progress


class TestExtraHandlers:
    def test_the_env_spec_is_parsed(self) -> None:
        assert extra_handlers("a=x.y:f, b = m:g") == {"a": "x.y:f", "b": "m:g"}

    def test_a_bad_spec_says_what_is_expected(self) -> None:
        with pytest.raises(ValueError, match="kind=module:function"):
            extra_handlers("a=nocolon")

    def test_the_env_var_makes_a_kind_resolvable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RANKLAB_EXTRA_HANDLERS", "t_env=tests.runs.handlers:record")
        get_settings.cache_clear()
        try:
            assert resolve("t_env") is handlers.record
            assert "t_env" in worker_mod.known_kinds()
        finally:
            worker_mod._loaded.pop("t_env", None)
            get_settings.cache_clear()


class TestBurstCommand:
    def test_worker_burst_runs_what_is_queued_then_exits(
        self, committed: sessionmaker[Session], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from app.cli import cli

        with committed.begin() as s:
            for _ in range(3):
                make_job(s, kind="t_record", params={"record": str(tmp_path / "r")})
        monkeypatch.setenv("RANKLAB_DATABASE_URL", db_url)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli, ["worker", "--burst", "--poll", "0.01"])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        assert "ran 3 job(s)" in result.output
        with committed() as s:
            assert set(s.scalars(select(Job.status))) == {"succeeded"}
            assert s.scalar(select(JobMetric.id)) is None
