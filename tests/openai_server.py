"""A small OpenAI-compatible /v1/completions server over a local transformers model, for tests.

It answers like vLLM does: `n` choices per prompt, each with text, finish_reason and (when
`logprobs` is asked for) the sampled tokens. `fail_next` makes the next requests answer with
an error status, and `fail_always` makes every request fail, so tests can see retries and a
clear job error. Run it alone with:  python tests/openai_server.py MODEL_DIR --port 8011
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class ServerState:
    model_dir: str
    fail_next: int = 0
    fail_status: int = 500
    fail_always: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(state: ServerState) -> FastAPI:
    from trainer.sampling.backends import LocalBackend, SamplingParams

    backend = LocalBackend(state.model_dir, device="cpu")
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.model_dir, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            state.requests.append(body)
            failing = state.fail_always or state.fail_next > 0
            if state.fail_next > 0:
                state.fail_next -= 1
        if failing:
            return JSONResponse(
                {"error": {"message": "the test server was told to fail"}}, status_code=state.fail_status
            )
        n = int(body.get("n", 1))
        params = SamplingParams(
            max_new_tokens=int(body.get("max_tokens", 16)),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0)),
        )
        with state.lock:  # one generate at a time: the model is shared
            samples = backend.generate([body["prompt"]], n=n, params=params, seed=int(body.get("seed", 0)))[0]
        choices = []
        for i, smp in enumerate(samples):
            choice: dict[str, Any] = {"index": i, "text": smp.text, "finish_reason": smp.finish_reason}
            if body.get("logprobs") is not None:
                choice["logprobs"] = {"tokens": ["t"] * int(smp.token_count or 0)}
            choices.append(choice)
        used = sum(int(s.token_count or 0) for s in samples)
        return JSONResponse(
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": choices,
                "usage": {"completion_tokens": used},
            }
        )

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    """uvicorn in a background thread on 127.0.0.1; `base_url` ends in /v1."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.port = free_port()
        config = uvicorn.Config(make_app(state), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test OpenAI server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    uvicorn.run(make_app(ServerState(args.model_dir)), host="127.0.0.1", port=args.port)
