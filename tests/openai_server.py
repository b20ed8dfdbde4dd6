"""A small OpenAI-compatible server over a local transformers model, for tests.

It answers like vLLM does, and checks each request body as a strict server would:

- `/v1/chat/completions`: `messages` must be a conversation (app.chat's rules) and is rendered
  with the model's chat template by LocalBackend.generate (trainer.render), as the local backend
  does;
  generation stops at the end of the turn; `n` choices, each with message.content,
  finish_reason and (when `logprobs` is true) one logprobs.content entry per sampled token.
- `/v1/completions`: `prompt` is text, tokenized as is (template tokens in it are read as
  tokens); it stops at EOS and at each `stop` string that is one token; `n` choices with text,
  finish_reason and (when `logprobs` is asked for) the sampled tokens.

A malformed body (no model, another model than `model_name`, bad `messages`, bad `n`) gets 400
or 404 with the reason. `max_n=1` refuses n>1 with 400 (as OpenAI's reasoning models do);
`ignore_n` answers one choice whatever n (as the llama.cpp server does). `fail_next` makes the
next requests answer with an error status, and `fail_always` makes every request fail, so tests
can see retries and a clear job error. Run it alone with:
  python tests/openai_server.py MODEL_DIR --port 8011
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class ServerState:
    model_dir: str
    model_name: str | None = None  # when set, any other `model` is refused with 404
    max_n: int | None = None  # when set, a larger n is refused with 400
    ignore_n: bool = False  # answer one choice whatever n asks
    fail_next: int = 0
    fail_status: int = 500
    fail_always: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status}}, status_code=status)


def make_app(state: ServerState) -> FastAPI:
    import torch

    from app.chat import ChatError, parse_conversation
    from trainer.sampling.backends import BackendError, LocalBackend, Sample, SamplingParams

    backend = LocalBackend(state.model_dir, device="cpu")
    tok = backend.tokenizer
    gen_lock = threading.Lock()  # one generate at a time: the model is shared
    app = FastAPI()

    def check(body: Any) -> JSONResponse | None:
        """The reason to refuse a body (vLLM's codes), or None."""
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        if not isinstance(body.get("model"), str):
            return _error(400, "model: required")
        if state.model_name is not None and body["model"] != state.model_name:
            return _error(404, f"The model `{body['model']}` does not exist.")
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return _error(400, f"n: must be a positive integer, not {n!r}")
        if state.max_n is not None and n > state.max_n:
            return _error(400, f"n: this model only supports n={state.max_n}")
        return None

    def admit(body: dict[str, Any]) -> JSONResponse | None:
        with state.lock:
            state.requests.append(body)
            failing = state.fail_always or state.fail_next > 0
            if state.fail_next > 0:
                state.fail_next -= 1
        if failing:
            return _error(state.fail_status, "the test server was told to fail")
        return check(body)

    def params_of(body: dict[str, Any]) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=int(body.get("max_tokens", 16)),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0)),
        )

    def answer(body: dict[str, Any], samples: list[Sample], obj: str, choice_of: Any) -> JSONResponse:
        used = sum(int(s.token_count or 0) for s in samples)
        return JSONResponse(
            {
                "id": "cmpl-test",
                "object": obj,
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice_of(i, smp) for i, smp in enumerate(samples)],
                "usage": {"completion_tokens": used},
            }
        )

    def n_of(body: dict[str, Any]) -> int:
        return 1 if state.ignore_n else int(body.get("n", 1))

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        name = state.model_name or state.model_dir
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if (refused := admit(body)) is not None:
            return refused
        if "prompt" in body:
            return _error(400, "prompt: not a chat completions field (use messages)")
        try:
            conv = parse_conversation(body.get("messages"))
        except ChatError as exc:
            return _error(400, str(exc))
        try:
            with gen_lock:
                samples = backend.generate(
                    [conv], n=n_of(body), params=params_of(body), seed=int(body.get("seed", 0))
                )[0]
        except BackendError as exc:
            return _error(400, str(exc))

        def choice(i: int, smp: Sample) -> dict[str, Any]:
            out: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": smp.text},
                "finish_reason": smp.finish_reason,
            }
            if body.get("logprobs"):
                entry = {"token": "t", "logprob": 0.0, "top_logprobs": []}
                out["logprobs"] = {"content": [entry] * int(smp.token_count or 0)}
            return out

        return answer(body, samples, "chat.completion", choice)

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        if (refused := admit(body)) is not None:
            return refused
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return _error(400, "prompt: must be non-empty text")
        if "messages" in body:
            return _error(400, "messages: not a completions field (use prompt)")
        ids = tok(body["prompt"], add_special_tokens=False)["input_ids"]
        batch = {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
        }
        stops = [] if tok.eos_token_id is None else [tok.eos_token_id]
        for text in body.get("stop") or []:
            one = tok(text, add_special_tokens=False)["input_ids"]
            if len(one) == 1:
                stops.append(one[0])
        with gen_lock:
            samples = backend.generate_batch(
                batch, n=n_of(body), params=params_of(body), seed=int(body.get("seed", 0)), stops=stops
            )[0]

        def choice(i: int, smp: Sample) -> dict[str, Any]:
            out: dict[str, Any] = {"index": i, "text": smp.text, "finish_reason": smp.finish_reason}
            if body.get("logprobs") is not None:
                out["logprobs"] = {"tokens": ["t"] * int(smp.token_count or 0)}
            return out

        return answer(body, samples, "text_completion", choice)

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """An ASGI app under uvicorn in a background thread on 127.0.0.1 and a free port (`config`:
    more uvicorn settings); as a context manager, started on entry (else RuntimeError naming
    `what`) and stopped on exit. The OpenAI server's, the browser tests' and the labeling API's."""

    def __init__(self, app: Any, *, what: str, **config: Any) -> None:
        self.what = what
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self.what} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class RunningServer(ServerThread):
    """The OpenAI-compatible app of `state` in a ServerThread; `base_url` ends in /v1."""

    def __init__(self, state: ServerState) -> None:
        super().__init__(make_app(state), what="the test OpenAI server")
        self.state = state

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    uvicorn.run(make_app(ServerState(args.model_dir)), host="127.0.0.1", port=args.port)
