"""The `openai` backend over real HTTP, against tests/openai_server.py serving the tiny chat model
(taught to reply, see conftest.py) and checking each request body."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.chat import Conversation
from app.config import Settings
from app.labeling.models import Task
from app.runs.models import Job
from tests.openai_server import RunningServer, ServerState
from tests.sampling.conftest import sample_in_one_run
from trainer import render
from trainer.models.tiny import IM_END, IM_START
from trainer.sampling.backends import BackendError, OpenAIBackend, Sample, SamplingParams

TEA: Conversation = [{"role": "user", "content": "How do I make tea?"}]
THREE_TURNS: Conversation = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Name a city in France."},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And one in Italy?"},
]
HI: Conversation = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server(replying_chat_model_path: Path) -> Iterator[RunningServer]:
    with RunningServer(ServerState(str(replying_chat_model_path), model_name="tiny")) as running:
        yield running


@pytest.fixture
def state(server: RunningServer) -> Iterator[ServerState]:
    server.state.requests.clear()
    yield server.state
    server.state.fail_next, server.state.fail_always, server.state.fail_status = 0, False, 500
    server.state.max_n, server.state.ignore_n = None, False


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


def fast_backend(server: RunningServer, **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(server.base_url, "tiny", retries=2, backoff=0.01, timeout=30, **kw)


def clean(out: list[list[Sample]]) -> bool:
    """No template token in any reply, each counted and within the limit, and some ended at the
    end of their turn (the tiny model's replies do not all end: it was taught for a few steps; an
    empty reply is the backend's to return, the sample job samples it again)."""
    every = [s for row in out for s in row]
    return all(
        IM_START not in s.text and IM_END not in s.text and s.token_count is not None and s.token_count <= 12
        for s in every
    ) and any(s.finish_reason == "stop" and s.token_count and s.token_count < 12 for s in every)


class TestChat:
    def test_messages_with_n_k_per_conversation(self, server: RunningServer, state: ServerState) -> None:
        backend = fast_backend(server)
        params = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.95)
        out = backend.generate([TEA, THREE_TURNS], n=4, params=params, seed=10)
        assert [len(row) for row in out] == [4, 4] and backend.n_supported
        # The server stopped each reply at the end of its turn and counted its tokens.
        assert clean(out)
        assert sorted((len(r["messages"]), r["n"], r["model"]) for r in state.requests) == [
            (1, 4, "tiny"),
            (4, 4, "tiny"),
        ]
        body = next(r for r in state.requests if len(r["messages"]) == 4)
        assert body["messages"] == THREE_TURNS and "prompt" not in body
        assert (body["max_tokens"], body["temperature"], body["top_p"]) == (12, 0.9, 0.95)
        assert out[1][0].request == {
            "api": "chat",
            "endpoint": f"{server.base_url}/chat/completions",
            "model": "tiny",
            "n": 4,
            "max_tokens": 12,
            "temperature": 0.9,
            "top_p": 0.95,
            "seed": 11,
        }

    def test_a_server_that_refuses_n_gets_k_requests_of_one(
        self, server: RunningServer, state: ServerState
    ) -> None:
        state.max_n = 1
        backend = fast_backend(server)
        out = backend.generate([TEA], n=3, params=SamplingParams(max_new_tokens=12), seed=5)
        assert len(out[0]) == 3 and clean(out)
        assert [(r["n"], r["seed"]) for r in state.requests] == [(3, 5), (1, 5), (1, 6), (1, 7)]
        assert [s.request["n"] for s in out[0]] == [1, 1, 1] and not backend.n_supported
        state.requests.clear()  # and it does not ask for n>1 again
        backend.generate([HI], n=2, params=SamplingParams(max_new_tokens=12), seed=0)
        assert [r["n"] for r in state.requests] == [1, 1]

    def test_a_server_that_answers_fewer_choices_is_asked_for_the_rest(
        self, server: RunningServer, state: ServerState
    ) -> None:
        state.ignore_n = True  # like llama.cpp's server: one choice whatever n says
        out = fast_backend(server).generate([TEA], n=3, params=SamplingParams(max_new_tokens=12), seed=5)
        assert len(out[0]) == 3 and clean(out)
        # Other seeds for the rest: the first seed again would give the same sample.
        assert [(r["n"], r["seed"]) for r in state.requests] == [(3, 5), (1, 6), (1, 7)]

    def test_a_body_the_server_refuses_is_a_clear_error(
        self, server: RunningServer, state: ServerState
    ) -> None:
        backend = OpenAIBackend(server.base_url, "not-served", retries=0, backoff=0.01)
        with pytest.raises(
            BackendError, match=r"refused the request \(HTTP 404.*`not-served` does not exist"
        ):
            backend.generate([HI], n=1, params=SamplingParams(), seed=0)


class TestCompletions:
    def test_the_prompt_is_the_templated_text_and_stops_at_the_end_of_the_turn(
        self, server: RunningServer, state: ServerState, replying_chat_model_path: Path
    ) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(replying_chat_model_path)
        backend = fast_backend(server, api="completions", tokenizer=tok)
        out = backend.generate([THREE_TURNS], n=4, params=SamplingParams(max_new_tokens=12), seed=3)
        body = state.requests[0]
        assert body["prompt"] == render.prompt_text(tok, THREE_TURNS) and "messages" not in body
        assert body["prompt"].endswith(f"{IM_START}assistant\n") and body["stop"] == [IM_END]
        assert len(out[0]) == 4 and clean(out)
        request = out[0][0].request
        assert (request["api"], request["endpoint"], request["template"]) == (
            "completions",
            f"{server.base_url}/completions",
            "model",
        )

    def test_without_a_tokenizer_the_fallback_template_is_sent(
        self, server: RunningServer, state: ServerState
    ) -> None:
        backend = fast_backend(server, api="completions")
        out = backend.generate([THREE_TURNS], n=1, params=SamplingParams(max_new_tokens=4), seed=0)
        assert state.requests[0]["prompt"] == (
            "System: Answer in one word.\n\nUser: Name a city in France.\n\nAssistant: Paris\n\n"
            "User: And one in Italy?\n\nAssistant:"
        )
        assert "stop" not in state.requests[0] and out[0][0].request["template"] == "fallback"

    def test_the_fallback_text_is_the_renderers_for_a_tokenizer_without_a_template(
        self, tiny_policy_path: Path
    ) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tiny_policy_path)  # the demo GPT-2: no chat template
        assert not render.has_own_template(tok)
        text = render.fallback_prompt_text(THREE_TURNS, eos_token=tok.eos_token)
        assert text == render.prompt_text(tok, THREE_TURNS) and tok.eos_token in text


@dataclass
class Served:
    """The sample job against the test server: committed SQLite sessions, settings pointing at
    the server, the server's state, and the policy it serves."""

    sessions: sessionmaker[Session]
    settings: Settings
    state: ServerState
    model_path: Path

    def sample(self, **set_kw: Any) -> tuple[int, Job]:
        """make_set's set (of `set_kw`) sampled through the server in one worker run: its id
        and its job, finished."""
        return sample_in_one_run(self.sessions, self.settings, self.model_path, **set_kw)


@pytest.fixture
def served(
    committed_sqlite: sessionmaker[Session],
    openai_settings: Settings,
    state: ServerState,
    replying_chat_model_path: Path,
) -> Served:
    return Served(committed_sqlite, openai_settings, state, replying_chat_model_path)


class TestSampleJob:
    def test_sample_job_through_the_server(self, served: Served) -> None:
        set_id, job = served.sample(n=3, k=4, max_new_tokens=12)
        assert job.status == "succeeded", job.error
        with served.sessions() as s:
            tasks = list(s.scalars(select(Task).where(Task.prompt_set_id == set_id)))
            assert len(tasks) == 3 and all(len(t.completions) == 4 for t in tasks)
            completions = [c for t in tasks for c in t.completions]
            assert all(c.params["backend"] == "openai" and c.text for c in completions)
            assert {c.params["request"]["endpoint"] for c in completions} == {
                f"{served.settings.openai_base_url}/chat/completions"
            }
        assert {r["model"] for r in served.state.requests} == {"tiny"}
        assert all(r["messages"][0]["content"].startswith("How do I make tea") for r in served.state.requests)

    def test_completions_mode_renders_with_the_policys_tokenizer(self, served: Served) -> None:
        from transformers import AutoTokenizer

        served.settings.openai_api = "completions"
        _, job = served.sample(n=2, k=4, max_new_tokens=12)
        assert job.status == "succeeded", job.error
        tok = AutoTokenizer.from_pretrained(served.model_path)
        first: Conversation = [{"role": "user", "content": "How do I make tea number 0?"}]
        assert render.prompt_text(tok, first) in {r["prompt"] for r in served.state.requests}

    def test_a_failing_server_fails_the_job_with_the_reason(
        self, served: Served, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("trainer.sampling.backends.OpenAIBackend._delay", lambda self, a, r: 0.01)
        served.state.fail_always, served.state.fail_status = True, 503
        set_id, job = served.sample(n=2, k=4)
        assert job.status == "failed"
        with served.sessions() as s:
            assert "BackendError" in job.error and "failed 3 times; last: HTTP 503" in job.error
            assert s.scalars(select(Task).where(Task.prompt_set_id == set_id)).all() == []


class TestOpenAILimits:
    def test_retries_on_429_then_succeeds(self, server: RunningServer, state: ServerState) -> None:
        state.fail_next, state.fail_status = 2, 429
        out = fast_backend(server).generate([HI], n=2, params=SamplingParams(max_new_tokens=12), seed=0)
        assert len(out[0]) == 2 and len(state.requests) == 3

    def test_a_failing_server_gives_a_clear_error(self, server: RunningServer, state: ServerState) -> None:
        state.fail_always = True
        with pytest.raises(BackendError) as err:
            fast_backend(server).generate([HI], n=2, params=SamplingParams(), seed=0)
        assert f"{server.base_url}/chat/completions failed 3 times; last: HTTP 500" in str(err.value)
        assert len(state.requests) == 3

    def test_a_client_error_is_not_retried(self, server: RunningServer, state: ServerState) -> None:
        state.fail_always, state.fail_status = True, 400
        with pytest.raises(BackendError) as err:
            fast_backend(server).generate([HI], n=1, params=SamplingParams(), seed=0)
        assert "refused the request (HTTP 400" in str(err.value) and len(state.requests) == 1
        # With n>1 a refusal may be of n itself: asked once more with n=1, then given up.
        state.requests.clear()
        with pytest.raises(BackendError, match=r"refused the request \(HTTP 400"):
            fast_backend(server).generate([HI], n=2, params=SamplingParams(), seed=0)
        assert [r["n"] for r in state.requests] == [2, 1]

    def test_a_server_that_never_answers_times_out_and_says_so(self) -> None:
        # A listening socket that nobody reads: the connection opens, no answer ever comes.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
            backend = OpenAIBackend(url, "tiny", retries=1, backoff=0.01, timeout=0.3)
            with pytest.raises(BackendError) as err:
                backend.generate([HI], n=2, params=SamplingParams(), seed=0)
        assert str(err.value) == f"{url}/chat/completions failed 2 times; last: no answer within 0.3 s"

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
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": f"answer {i}"},
                    "finish_reason": "stop",
                }
                for i in range(n)
            ]
            return httpx.Response(200, json={"choices": choices})

        backend = OpenAIBackend("http://server.test/v1", "tiny", concurrency=2)
        backend.client = httpx.Client(transport=httpx.MockTransport(answer))
        convs: list[Conversation] = [[{"role": "user", "content": f"prompt {i}"}] for i in range(8)]
        out = backend.generate(convs, n=4, params=SamplingParams(), seed=0)
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
    backend = make_backend(real, settings)
    assert isinstance(backend, OpenAIBackend) and backend.api == "chat"
    assert backend.url == "http://gpu:8001/v1/chat/completions"
