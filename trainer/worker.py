"""The worker: claims jobs from the database queue and runs each with trainer.runner.

Any number of workers on any number of machines share one PostgreSQL database: each job is
claimed by exactly one (SKIP LOCKED). A worker that dies stops beating; its job is requeued
by whichever worker next sees it stale.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.runs import service as jobs
from trainer import runner

log = logging.getLogger("ranklab.worker")


def default_worker_id() -> str:
    # The random tail keeps ids unique where pids repeat (containers all run as pid 1).
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class Worker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        worker_id: str | None = None,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 10.0,
        stale_seconds: float = 120.0,
        kinds: list[str] | None = None,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id or default_worker_id()
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.kinds = kinds
        self.stop = threading.Event()

    def run(self, *, burst: bool = False) -> int:
        """Work until stopped; with burst, until nothing is left to claim. Returns jobs run."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            # `docker stop`, `ranklab serve` ending, systemd: SIGTERM stops like Ctrl-C, and the
            # job in hand goes straight back to the queue (see run_one) instead of going stale.
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        done = 0
        try:
            while not self.stop.is_set():
                self.maintain()
                if self.run_one():
                    done += 1
                elif burst:
                    break
                else:
                    self.stop.wait(self.poll_seconds)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return done

    def maintain(self) -> None:
        """Requeue jobs of dead workers and fail chains that can no longer run."""
        runner.in_transaction(
            self.sessions,
            lambda s: (
                jobs.requeue_stale(session=s, stale_seconds=self.stale_seconds),
                jobs.fail_broken_chains(session=s),
            ),
        )

    def run_one(self) -> bool:
        """Claim one job and run it to its end. False when nothing was claimable."""
        ctx = runner.claim(self.sessions, worker_id=self.worker_id, kinds=self.kinds)
        if ctx is None:
            return False
        log.info("claimed job %s (%s), attempt %s", ctx.job_id, ctx.kind, ctx.attempt)
        runner.run(ctx, heartbeat_seconds=self.heartbeat_seconds)
        return True
