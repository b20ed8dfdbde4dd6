"""Sampling backends behind one interface: `generate(prompts, n=K, params, seed)` returns, for
each prompt, K samples with their text, finish reason ("stop" at EOS, "length" at the limit)
and token count.

- LocalBackend: transformers in this process; one batched `generate` per group of prompts with
  num_return_sequences=K and left padding.
- OpenAIBackend: any OpenAI-compatible /v1/completions server (vLLM, TGI, llama.cpp), n=K per
  request, a bounded number of requests in flight, retries with backoff on 429 and 5xx, timeouts.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import httpx

from app.config import Settings
from app.runs.models import ModelVersion


class BackendError(RuntimeError):
    """Sampling cannot go on; the message is what the job's error shows."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        return cls(**{k: d[k] for k in ("max_new_tokens", "temperature", "top_p", "top_k") if k in d})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str
    token_count: int | None


class Backend(Protocol):
    name: str

    def generate(
        self, prompts: list[str], *, n: int, params: SamplingParams, seed: int
    ) -> list[list[Sample]]: ...


class LocalBackend:
    name = "local"

    def __init__(self, path: str, *, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001  (the reason goes to the job, never a fallback)
            raise BackendError(
                f"could not load the policy from {path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()  # type: ignore[arg-type]
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.eos_token_id
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )

    def generate(
        self, prompts: list[str], *, n: int, params: SamplingParams, seed: int
    ) -> list[list[Sample]]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        width = enc["input_ids"].shape[1]
        max_new = params.max_new_tokens
        if self.max_positions:
            max_new = min(max_new, self.max_positions - width)
            if max_new < 1:
                raise BackendError(
                    f"a prompt of {width} tokens leaves no room in this model's "
                    f"{self.max_positions} positions"
                )
        torch.manual_seed(seed)
        with torch.no_grad():
            # top_k=0 is passed as is: it turns top-k off, where None would mean generate's 50.
            out = self.model.generate(
                **enc,
                do_sample=True,
                num_return_sequences=n,
                max_new_tokens=max_new,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.eos_id,
            )  # (B*n, width + new), the n samples of each prompt next to each other
        new = out[:, width:].tolist()
        results: list[list[Sample]] = [[] for _ in prompts]
        for row, ids in enumerate(new):
            stop = ids.index(self.eos_id) if self.eos_id in ids else None
            kept = ids[:stop] if stop is not None else ids
            text = str(self.tokenizer.decode(kept, skip_special_tokens=True))
            results[row // n].append(
                Sample(
                    text=text.strip(),
                    finish_reason="stop" if stop is not None else "length",
                    token_count=len(kept),
                )
            )
        return results


RETRY_STATUSES = {429, 500, 502, 503, 504}


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.client = httpx.Client(timeout=timeout, headers=self.headers)

    def generate(
        self, prompts: list[str], *, n: int, params: SamplingParams, seed: int
    ) -> list[list[Sample]]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts) or 1)) as pool:
            return list(pool.map(lambda ip: self._one(ip[1], n, params, seed + ip[0]), enumerate(prompts)))

    def _one(self, prompt: str, n: int, params: SamplingParams, seed: int) -> list[Sample]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "n": n,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed,
            # Sampled tokens come back with logprobs, which is how each completion is counted.
            "logprobs": 0,
        }
        if params.top_k:
            body["top_k"] = params.top_k  # vLLM and TGI accept it; plain OpenAI does not
        data = self._post(body)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise BackendError(f"{self.url} returned {len(choices)} choices, asked for n={n}")
        out = []
        for c in choices:
            tokens = (
                ((c.get("logprobs") or {}).get("tokens")) if isinstance(c.get("logprobs"), dict) else None
            )
            count = (
                len(tokens)
                if tokens is not None
                else ((data.get("usage") or {}).get("completion_tokens") if n == 1 else None)
            )
            reason = c.get("finish_reason") or "stop"
            out.append(
                Sample(
                    text=str(c.get("text", "")).strip(),
                    finish_reason="length" if reason == "length" else "stop",
                    token_count=count,
                )
            )
        return out

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        last_response: httpx.Response | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, last_response))
            last_response = None
            try:
                last_response = self.client.post(self.url, json=body)
            except httpx.TimeoutException:
                last = f"no answer within {self.timeout:g} s"
                continue
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if last_response.status_code == 200:
                try:
                    return dict(last_response.json())
                except ValueError as exc:
                    raise BackendError(f"{self.url} answered 200 with a body that is not JSON") from exc
            last = f"HTTP {last_response.status_code}: {last_response.text[:300]}"
            if last_response.status_code not in RETRY_STATUSES:
                raise BackendError(f"{self.url} refused the request ({last})")
        raise BackendError(f"{self.url} failed {self.retries + 1} times; last: {last}")

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff * 2 ** (attempt - 1)
        if response is not None and (after := response.headers.get("retry-after")):
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(after), 30.0))
        return delay


def make_backend(version: ModelVersion, settings: Settings) -> Backend:
    """The backend that samples `version`; raises BackendError (never falls back) if it cannot."""
    if settings.sampling_backend == "openai":
        if not settings.openai_base_url:
            raise BackendError("RANKLAB_SAMPLING_BACKEND=openai needs RANKLAB_OPENAI_BASE_URL")
        if version.is_demo:
            # The server samples its own model: its text would be recorded (and badged) as the demo's.
            raise BackendError(
                "an OpenAI-compatible server cannot serve the locally built demo model; "
                "set RANKLAB_POLICY_MODEL to the model the server serves (for the web "
                "server and the workers alike), then upload the set again"
            )
        model = (version.config or {}).get("openai_model") or settings.openai_model or version.source
        return OpenAIBackend(
            settings.openai_base_url,
            model,
            api_key=settings.openai_api_key,
            concurrency=settings.openai_concurrency,
            timeout=settings.openai_timeout_seconds,
            retries=settings.openai_retries,
        )
    # The base default and demo models are made on first use; every other version is loaded.
    from trainer.models import policy_files

    return LocalBackend(policy_files(version, settings))
