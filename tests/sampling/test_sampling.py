from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.chat import Conversation
from app.config import Settings
from app.labeling.models import Completion, Task
from app.runs import service as jobs
from app.runs.models import Job
from tests.sampling.conftest import add_version, make_set, set_of
from trainer.runner import JobContext
from trainer.sampling import job as sampling
from trainer.sampling.backends import Sample, SamplingParams
from trainer.worker import Worker

CONV: Conversation = [{"role": "user", "content": "p"}]


def tasks_of(sessions: sessionmaker[Session], set_id: int) -> list[Task]:
    with sessions() as s:
        return list(s.scalars(select(Task).where(Task.prompt_set_id == set_id).order_by(Task.id)))


def job_of(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


class Crash(Exception):
    """Stands for the worker process dying in the middle of a batch."""


def wrap_backends(monkeypatch: pytest.MonkeyPatch, before_generate: Any) -> None:
    real = sampling.make_backend

    class Wrapped:
        def __init__(self, inner: Any) -> None:
            self.inner, self.name = inner, inner.name

        def generate(self, prompts: list[Conversation], **kw: Any) -> list[list[Sample]]:
            before_generate(prompts, kw)
            return self.inner.generate(prompts, **kw)

    monkeypatch.setattr(sampling, "make_backend", lambda v, s: Wrapped(real(v, s)))


@dataclass
class BatchedSet:
    """Six prompts, k=4, sampled two prompts a batch by the tiny policy."""

    sessions: sessionmaker[Session]
    version_id: int
    set_id: int
    job_id: int
    monkeypatch: pytest.MonkeyPatch

    def run(self, before_generate: Any) -> None:
        """Its job, run by a worker that calls `before_generate(prompts, kw)` before each batch."""
        wrap_backends(self.monkeypatch, before_generate)
        assert Worker(self.sessions, worker_id="w1").run_one()


@pytest.fixture
def batched(
    committed: sessionmaker[Session],
    settings: Settings,
    tiny_policy_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> BatchedSet:
    vid = add_version(committed, tiny_policy_path)
    set_id, job_id = make_set(committed, settings, vid, n=6, k=4, batch_prompts=2)
    return BatchedSet(committed, vid, set_id, job_id, monkeypatch)


class TestSampleJob:
    def test_every_prompt_gets_exactly_k_completions_with_their_record(
        self, committed: sessionmaker[Session], settings: Settings, tiny_policy_path: Path
    ) -> None:
        vid = add_version(committed, tiny_policy_path)
        set_id, job_id = make_set(committed, settings, vid, n=5, k=4, batch_prompts=2)
        assert Worker(committed, worker_id="w1").run_one()
        job = job_of(committed, job_id)
        assert job.status == "succeeded", job.error
        assert job.progress == 1.0 and job.result["completions"] == 20
        tasks = tasks_of(committed, set_id)
        assert len(tasks) == 5 and len({t.prompt_id for t in tasks}) == 5
        for t in tasks:
            assert t.status == "open" and t.sampling_job_id == job_id
            assert len(t.completions) == 4
            for c in t.completions:
                assert c.model_version_id == vid
                assert c.params["max_new_tokens"] == 8 and c.params["backend"] == "local"
                assert c.seed is not None and c.finish_reason in ("stop", "length")
                assert c.token_count is not None and 0 <= c.token_count <= 8
        assert set_of(committed, set_id).status == "active"
        with committed() as s:  # the planner knows the new tasks at once (db.refresh_statistics)
            if s.get_bind().dialect.name == "postgresql":
                assert s.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'task'::regclass")) == 5

    def test_a_worker_killed_mid_job_and_another_finishing_gives_one_set_per_prompt(
        self, batched: BatchedSet, settings: Settings
    ) -> None:
        committed, set_id, job_id = batched.sessions, batched.set_id, batched.job_id
        monkeypatch = batched.monkeypatch
        calls = {"n": 0}

        def die_in_third_batch(prompts: list[Conversation], kw: dict[str, Any]) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise Crash()

        wrap_backends(monkeypatch, die_in_third_batch)
        with committed.begin() as s:
            job = jobs.claim(session=s, worker_id="dying")
            assert job is not None and job.id == job_id
            ctx = JobContext(
                job_id=job.id,
                kind=job.kind,
                params=dict(job.params),
                attempt=job.attempts,
                worker_id="dying",
                sessions=committed,
            )
        with pytest.raises(Crash):
            sampling.run_job(ctx)
        assert len(tasks_of(committed, set_id)) == 4  # two batches of two committed
        # The dead worker's heartbeat goes stale; the job is requeued and another finishes it.
        with committed.begin() as s:
            assert jobs.requeue_stale(session=s, stale_seconds=-1) == 1
        monkeypatch.undo()
        monkeypatch.setattr("trainer.sampling.job.get_settings", lambda: settings)
        assert Worker(committed, worker_id="second").run_one()
        job = job_of(committed, job_id)
        assert job.status == "succeeded" and job.attempts == 2
        tasks = tasks_of(committed, set_id)
        assert len(tasks) == 6 and len({t.prompt_id for t in tasks}) == 6
        assert all(len(t.completions) == 4 for t in tasks)
        with committed() as s:
            assert s.scalar(select(func.count()).select_from(Completion)) == 24
        # A late write of an already written batch by the lost worker is refused, not doubled.
        with committed() as s:
            first = s.scalars(select(Task).order_by(Task.id)).first()
            assert first is not None
            pid = first.prompt_id
        smp = (batched.version_id, Sample("late", "stop", 1), 1)
        assert (
            sampling._write_batch(
                ctx, set_id, [(pid, CONV)], [([(smp, False)] * 4, 0)], SamplingParams(), "local"
            )
            == 0
        )
        assert len(tasks_of(committed, set_id)) == 6

    def test_tasks_are_open_while_the_job_still_runs(self, batched: BatchedSet) -> None:
        committed, set_id, job_id = batched.sessions, batched.set_id, batched.job_id
        seen: list[tuple[int, str, float]] = []

        def look(prompts: list[Conversation], kw: dict[str, Any]) -> None:
            with committed() as s:
                open_tasks = s.scalar(
                    select(func.count())
                    .select_from(Task)
                    .where(Task.prompt_set_id == set_id, Task.status == "open")
                )
                job = s.get(Job, job_id)
                assert job is not None
                seen.append((open_tasks or 0, job.status, job.progress))

        batched.run(look)
        assert [n for n, _, _ in seen] == [0, 2, 4]
        assert all(status == "running" for _, status, _ in seen)
        assert seen[2][2] == pytest.approx(4 / 6)

    def test_cancel_stops_after_the_current_batch(self, batched: BatchedSet) -> None:
        committed, set_id, job_id = batched.sessions, batched.set_id, batched.job_id

        def cancel(prompts: list[Conversation], kw: dict[str, Any]) -> None:
            with committed.begin() as s:
                job = s.get(Job, job_id)
                assert job is not None
                jobs.request_cancel(session=s, job=job)

        batched.run(cancel)
        assert job_of(committed, job_id).status == "cancelled"
        assert len(tasks_of(committed, set_id)) == 2
        assert set_of(committed, set_id).status == "active"

    def test_two_versions_give_half_of_k_each(
        self, committed: sessionmaker[Session], settings: Settings, tiny_policy_path: Path
    ) -> None:
        v1 = add_version(committed, tiny_policy_path, name="v1")
        v2 = add_version(committed, tiny_policy_path, name="v2", active=False)
        set_id, job_id = make_set(committed, settings, v1, n=3, k=5, compare_id=v2)
        assert Worker(committed, worker_id="w1").run_one()
        assert job_of(committed, job_id).status == "succeeded"
        for t in tasks_of(committed, set_id):
            versions = sorted(c.model_version_id for c in t.completions)
            assert versions == [v1, v1, v1, v2, v2]

    def test_a_model_that_fails_to_load_fails_the_job_with_the_reason(
        self, committed: sessionmaker[Session], settings: Settings, tmp_path: Path
    ) -> None:
        vid = add_version(committed, tmp_path / "no-such-model")
        set_id, job_id = make_set(committed, settings, vid, n=2)
        assert Worker(committed, worker_id="w1").run_one()
        job = job_of(committed, job_id)
        assert job.status == "failed"
        assert f"policy version {vid}" in job.error and "could not load the policy" in job.error
        assert "no-such-model" in job.error
        assert tasks_of(committed, set_id) == []
        # Nothing was built or used in its place.
        assert not (settings.artifacts_dir / "demo-policy").exists()


class FakeBackend:
    name = "fake"

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.calls = 0

    def generate(
        self, prompts: list[Conversation], *, n: int, params: SamplingParams, seed: int
    ) -> list[list[Sample]]:
        texts = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [[Sample(texts[i % len(texts)], "stop", 2) for i in range(n)] for _ in prompts]


class TestDuplicates:
    def test_identical_completions_are_resampled(self) -> None:
        backend = FakeBackend([["same"], ["other a", "other b", "other c"]])
        v = sampling._Version(1, "v", False)
        out = sampling._sample_batch([(1, CONV)], [v], [backend], [4], SamplingParams(), 0, 3)
        assert out[0] is not None
        marked, dups = out[0]
        assert dups == 0
        assert sorted(t[1].text for t, _ in marked) == ["other a", "other b", "other c", "same"]

    def test_still_identical_after_the_tries_are_kept_and_marked(self) -> None:
        backend = FakeBackend([["same"]])
        v = sampling._Version(1, "v", False)
        out = sampling._sample_batch([(1, CONV)], [v], [backend], [4], SamplingParams(), 0, 3)
        assert out[0] is not None
        marked, dups = out[0]
        assert backend.calls == 4  # the batch, then three resampling rounds
        assert [d for _, d in marked] == [False, True, True, True] and dups == 3

    def test_still_empty_after_the_tries_is_no_candidate(self) -> None:
        """A fake backend (a real model that is empty only sometimes is in test_chat_sampling.py):
        one empty reply in every draw leaves the prompt without a result, after a bounded number
        of rounds."""
        backend = FakeBackend([["", "a", "b", "c"], [""]])
        v = sampling._Version(1, "v", False)
        out = sampling._sample_batch([(1, CONV)], [v], [backend], [4], SamplingParams(), 0, 3)
        assert out == [None] and backend.calls == 4
