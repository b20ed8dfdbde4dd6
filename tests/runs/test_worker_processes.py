"""Workers as separate threads and processes over real PostgreSQL: no job is taken twice, and
a job whose worker was killed is claimed again after its lease and finishes once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_sessionmaker
from app.runs.models import Job, JobStatus
from tests.factories import make_job
from tests.runs import handlers
from trainer.runner import register
from trainer.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
register("t_record", handlers.record)
register("t_slow", handlers.slow)


def _worker_process(url: str, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`python -m app.cli worker ...` on `url`, knowing the test handlers; returns once it runs.
    Its stderr goes to `log` (a file never fills up and blocks the worker, as a pipe could)."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={
                **os.environ,
                "RANKLAB_DATABASE_URL": url,
                "RANKLAB_ENV": "test",
                "RANKLAB_EXTRA_HANDLERS": "t_record=tests.runs.handlers:record,"
                "t_slow=tests.runs.handlers:slow",
                **env,
            },
        )
    deadline = time.monotonic() + 60
    while " started" not in log.read_text():
        assert proc.poll() is None, f"worker exited {proc.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def _wait(sessions: sessionmaker[Session], job_id: int, pred, timeout: float = 60) -> Job:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            if pred(job):
                return job
        assert time.monotonic() < deadline, f"job {job_id} is {job.status}: {job.message}"
        time.sleep(0.05)


def run_worker_threads(url: str, prefix: str, *, heartbeat_seconds: float, n: int = 3) -> None:
    """n burst workers in threads, to the end; each its own sessionmaker over its own pool connections."""
    workers = [
        Worker(
            make_sessionmaker(url),
            worker_id=f"{prefix}-{i}",
            poll_seconds=0.05,
            heartbeat_seconds=heartbeat_seconds,
        )
        for i in range(n)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"burst": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


class TestManyWorkers:
    def test_threads_and_processes_never_take_the_same_job(
        self, committed_pg: sessionmaker[Session], pg_only_url: str, tmp_path: Path
    ) -> None:
        record = tmp_path / "claims.txt"
        n_jobs = 200
        with committed_pg.begin() as s:
            ids = {
                make_job(s, kind="t_record", params={"record": str(record), "sleep": 0.003}).id
                for _ in range(n_jobs)
            }
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        procs = [_worker_process(pg_only_url, log, "--burst", "--poll", "0.05") for log in logs]
        run_worker_threads(pg_only_url, "thread", heartbeat_seconds=30)
        for p, log in zip(procs, logs, strict=True):
            assert p.wait(timeout=120) == 0, log.read_text()

        runs = [line.split() for line in record.read_text().splitlines()]
        per_job = Counter(int(job_id) for job_id, *_ in runs)
        assert set(per_job) == ids
        assert max(per_job.values()) == 1, [j for j, n in per_job.items() if n > 1]
        who = Counter(line[2].split(":")[0] for line in runs)
        assert len(who) >= 2, who  # the work really was shared
        with committed_pg() as s:
            rows = s.execute(select(Job.status, Job.attempts, Job.worker_id, Job.result)).all()
        assert {(status, attempts) for status, attempts, _, _ in rows} == {("succeeded", 1)}
        assert all(result == {"worker": worker} for _, _, worker, result in rows)

    def test_threads_on_sqlite_never_take_the_same_job(self, sqlite_url: str, tmp_path: Path) -> None:
        """The default install: one SQLite file, the web process and workers writing to it."""
        from tests.conftest import _empty_all_tables

        _empty_all_tables(sqlite_url)
        sessions = make_sessionmaker(sqlite_url)
        record = tmp_path / "claims.txt"
        try:
            with sessions.begin() as s:
                ids = {make_job(s, kind="t_record", params={"record": str(record)}).id for _ in range(60)}
            run_worker_threads(sqlite_url, "lite", heartbeat_seconds=0.05)
            per_job = Counter(int(line.split()[0]) for line in record.read_text().splitlines())
            assert set(per_job) == ids and max(per_job.values()) == 1
            with sessions() as s:
                assert set(s.scalars(select(Job.status))) == {"succeeded"}
        finally:
            _empty_all_tables(sqlite_url)


class TestKilledWorker:
    def test_a_killed_workers_job_is_claimed_again_and_finishes_once(
        self, committed_pg: sessionmaker[Session], pg_only_url: str, tmp_path: Path
    ) -> None:
        record = tmp_path / "runs.txt"
        with committed_pg.begin() as s:
            job_id = make_job(s, kind="t_slow", params={"record": str(record), "hang_first": True}).id
        proc = _worker_process(
            pg_only_url, tmp_path / "worker.log", "--poll", "0.05", RANKLAB_JOB_STALE_SECONDS="2"
        )
        try:
            running = _wait(committed_pg, job_id, lambda j: j.status == JobStatus.running and j.progress > 0)
            dead_worker = running.worker_id
        finally:
            proc.kill()
            proc.wait()
        rescuer = Worker(
            committed_pg, worker_id="rescuer", poll_seconds=0.05, heartbeat_seconds=30, stale_seconds=1.0
        )
        # Nothing to take until the dead worker's last heartbeat is older than the stale limit.
        deadline = time.monotonic() + 30
        while rescuer.run(burst=True) == 0:
            assert time.monotonic() < deadline, "the dead worker's job was never requeued"
            time.sleep(0.2)
        job = _wait(committed_pg, job_id, lambda j: j.status != JobStatus.running, timeout=5)
        assert (job.status, job.attempts, job.worker_id, job.result) == (
            "succeeded",
            2,
            "rescuer",
            {"attempt": 2},
        )
        assert f"requeued: worker {dead_worker} stopped answering" in job.log
        lines = record.read_text().splitlines()
        assert [line.split()[3] for line in lines] == ["started", "started", "finished"]
        assert lines[-1].split()[1:3] == ["2", "rescuer"]


class TestStoppedWorker:
    def test_sigterm_gives_the_job_back_at_once_without_using_an_attempt(
        self, committed_pg: sessionmaker[Session], pg_only_url: str, tmp_path: Path
    ) -> None:
        with committed_pg.begin() as s:
            job_id = make_job(s, kind="t_slow", params={"hang_first": True}).id
        log = tmp_path / "worker.log"
        proc = _worker_process(pg_only_url, log, "--poll", "0.05")
        try:
            _wait(committed_pg, job_id, lambda j: j.status == JobStatus.running and j.progress > 0)
            proc.terminate()  # what `docker stop` and the end of `ranklab serve` send
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            proc.kill()
        with committed_pg() as s:
            job = s.get(Job, job_id)
            assert job is not None
            assert (job.status, job.attempts, job.worker_id) == ("queued", 0, None)
            assert "was stopped" in job.message
