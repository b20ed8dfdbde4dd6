"""The `openai` backend over real HTTP, against tests/openai_server.py serving the tiny policy."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.labeling.models import Task
from app.runs.models import Job
from tests.openai_server import RunningServer, ServerState
from tests.sampling.conftest import add_version, make_set
from trainer.sampling.backends import BackendError, OpenAIBackend, SamplingParams
from trainer.worker import Worker


@pytest.fixture(scope="module")
def server(tiny_policy_path: Path) -> Iterator[RunningServer]:
    with RunningServer(ServerState(str(tiny_policy_path))) as running:
        yield running


@pytest.fixture
def state(server: RunningServer) -> Iterator[ServerState]:
    server.state.requests.clear()
    yield server.state
    server.state.fail_next, server.state.fail_always, server.state.fail_status = 0, False, 500


@pytest.fixture
def openai_settings(
    sqlite_url: str, tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    s = Settings(
        database_url=sqlite_url,
        env="test",
        artifacts_dir=tmp_path / "artifacts",
        sampling_backend="openai",
        openai_base_url=server.base_url,
        openai_model="tiny",
        openai_retries=2,
        openai_concurrency=2,
    )
    monkeypatch.setattr("trainer.sampling.job.get_settings", lambda: s)
    return s


def fast_backend(server: RunningServer, **kw: object) -> OpenAIBackend:
    return OpenAIBackend(server.base_url, "tiny", retries=2, backoff=0.01, timeout=30, **kw)  # type: ignore[arg-type]


class TestOpenAIBackend:
    def test_n_completions_per_prompt_over_http(self, server: RunningServer, state: ServerState) -> None:
        out = fast_backend(server).generate(
            ["How do I boil an egg?", "Tell me a joke."], n=4, params=SamplingParams(max_new_tokens=6), seed=1
        )
        assert [len(row) for row in out] == [4, 4]
        assert all(
            s.finish_reason in ("stop", "length") and s.token_count is not None for row in out for s in row
        )
        assert len(state.requests) == 2 and {r["n"] for r in state.requests} == {4}
        assert state.requests[0]["max_tokens"] == 6

    def test_retries_on_429_then_succeeds(self, server: RunningServer, state: ServerState) -> None:
        state.fail_next, state.fail_status = 2, 429
        out = fast_backend(server).generate(["Hi"], n=2, params=SamplingParams(max_new_tokens=4), seed=0)
        assert len(out[0]) == 2 and len(state.requests) == 3

    def test_a_failing_server_gives_a_clear_error(self, server: RunningServer, state: ServerState) -> None:
        state.fail_always = True
        with pytest.raises(BackendError) as err:
            fast_backend(server).generate(["Hi"], n=2, params=SamplingParams(), seed=0)
        assert f"{server.base_url}/completions failed 3 times; last: HTTP 500" in str(err.value)
        assert len(state.requests) == 3

    def test_sample_job_through_the_server(
        self,
        committed_sqlite: sessionmaker[Session],
        openai_settings: Settings,
        state: ServerState,
        tiny_policy_path: Path,
    ) -> None:
        vid = add_version(committed_sqlite, tiny_policy_path)
        set_id, job_id = make_set(committed_sqlite, openai_settings, vid, n=3, k=4)
        assert Worker(committed_sqlite, worker_id="w").run_one()
        with committed_sqlite() as s:
            job = s.get(Job, job_id)
            assert job is not None and job.status == "succeeded", job and job.error
            tasks = list(s.scalars(select(Task).where(Task.prompt_set_id == set_id)))
            assert len(tasks) == 3 and all(len(t.completions) == 4 for t in tasks)
            assert all(c.params["backend"] == "openai" for t in tasks for c in t.completions)
        assert {r["model"] for r in state.requests} == {"tiny"}

    def test_a_failing_server_fails_the_job_with_the_reason(
        self,
        committed_sqlite: sessionmaker[Session],
        openai_settings: Settings,
        state: ServerState,
        tiny_policy_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr("trainer.sampling.backends.OpenAIBackend._delay", lambda self, a, r: 0.01)
        state.fail_always, state.fail_status = True, 503
        vid = add_version(committed_sqlite, tiny_policy_path)
        set_id, job_id = make_set(committed_sqlite, openai_settings, vid, n=2, k=4)
        assert Worker(committed_sqlite, worker_id="w").run_one()
        with committed_sqlite() as s:
            job = s.get(Job, job_id)
            assert job is not None and job.status == "failed"
            assert "BackendError" in job.error and "failed 3 times; last: HTTP 503" in job.error
            assert s.scalars(select(Task).where(Task.prompt_set_id == set_id)).all() == []


class TestOpenAILimits:
    def test_a_client_error_is_not_retried(self, server: RunningServer, state: ServerState) -> None:
        state.fail_next, state.fail_status = 1, 400
        with pytest.raises(BackendError) as err:
            fast_backend(server).generate(["Hi"], n=2, params=SamplingParams(), seed=0)
        assert "refused the request (HTTP 400" in str(err.value) and len(state.requests) == 1

    def test_a_server_that_never_answers_times_out_and_says_so(self) -> None:
        # A listening socket that nobody reads: the connection opens, no answer ever comes.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
            backend = OpenAIBackend(url, "tiny", retries=1, backoff=0.01, timeout=0.3)
            with pytest.raises(BackendError) as err:
                backend.generate(["Hi"], n=2, params=SamplingParams(), seed=0)
        assert str(err.value) == f"{url}/completions failed 2 times; last: no answer within 0.3 s"

    def test_no_more_requests_in_flight_than_the_concurrency_limit(self) -> None:
        in_flight, peak, lock = 0, 0, threading.Lock()

        def answer(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.05)
            with lock:
                in_flight -= 1
            n = json.loads(request.content)["n"]
            return httpx.Response(
                200,
                json={
                    "choices": [
                        {"index": i, "text": f"answer {i}", "finish_reason": "stop"} for i in range(n)
                    ]
                },
            )

        backend = OpenAIBackend("http://server.test/v1", "tiny", concurrency=2)
        backend.client = httpx.Client(transport=httpx.MockTransport(answer))
        out = backend.generate([f"prompt {i}" for i in range(8)], n=4, params=SamplingParams(), seed=0)
        assert [len(row) for row in out] == [4] * 8
        assert peak == 2


def test_the_demo_policy_is_never_sampled_through_a_server() -> None:
    """The server would answer with its own model, recorded and badged as the demo's: refused."""
    from app.runs.models import ModelVersion
    from trainer.sampling.backends import make_backend

    demo = ModelVersion(kind="policy", name="demo", source="demo", is_demo=True)
    settings = Settings(
        env="test", sampling_backend="openai", openai_base_url="http://gpu:8001/v1", openai_model="served"
    )
    with pytest.raises(BackendError, match="set RANKLAB_POLICY_MODEL to the model the server serves"):
        make_backend(demo, settings)
    real = ModelVersion(kind="policy", name="served", source="served", is_demo=False)
    assert isinstance(make_backend(real, settings), OpenAIBackend)
