"""Sampling backends behind one interface: `generate(conversations, n=K, params, seed)` returns,
for each conversation, K samples with their text, finish reason ("stop" at the end of the turn,
"length" at the limit), token count and the request that produced them (provenance).

A conversation is a list of `{role, content}` messages ending with a user turn (app.chat); a
backend never sees a prompt as bare text.

- LocalBackend: transformers in this process. Model input comes only from trainer.render (the
  model's chat template, left-padded by `generation_batch`); one batched `generate` per group of
  conversations with num_return_sequences=K; generation stops at `render.stop_token_ids` (EOS and
  the template's end-of-turn token, e.g. `<|im_end|>`) and the text is stored without special
  tokens (`render.strip_special`).
- OpenAIBackend: any OpenAI-compatible server (vLLM, TGI, llama.cpp). `api="chat"` sends the
  messages to /v1/chat/completions (the server applies the template and stops at the end of the
  turn) with n=K, or K requests of n=1 where the server refuses n>1 or answers with fewer
  choices; `api="completions"` sends /v1/completions the prompt rendered as text by
  `render.prompt_text` (base models). A bounded number of requests in flight, retries with
  backoff on 429 and 5xx, timeouts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import httpx

from app.chat import ChatError, Conversation
from app.config import Settings
from app.runs.models import ModelVersion
from app.runs.params.sample import SAMPLE
from trainer import render
from trainer.config import SpecConfig

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger("ranklab.sampling")

Api = Literal["chat", "completions"]


class BackendError(RuntimeError):
    """Sampling cannot go on; the message is what the job's error shows."""


@dataclass(frozen=True)
class SamplingParams(SpecConfig):
    """A set's sampling settings; the defaults and ranges are SAMPLE's (app/runs/params/sample.py)."""

    SPEC = SAMPLE
    UNKNOWN = "sampling setting"

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int  # 0: off

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """A set's stored settings; keys it does not know (older sets) are passed over."""
        return super().from_dict({k: v for k, v in values.items() if k in cls.SPEC})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str
    token_count: int | None
    # What was asked of whom (model, endpoint, n, the parameters sent): stored with the completion.
    request: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def generate(
        self, prompts: Sequence[Conversation], *, n: int, params: SamplingParams, seed: int
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
        self.path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()  # type: ignore[arg-type]
        try:
            self.stops = render.stop_token_ids(self.tokenizer)
            self.pad_id = render.pad_id(self.tokenizer)
        except render.TemplateError as exc:
            raise BackendError(f"the policy at {path!r} cannot be sampled: {exc}") from exc
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )

    def generate(
        self, prompts: Sequence[Conversation], *, n: int, params: SamplingParams, seed: int
    ) -> list[list[Sample]]:
        try:
            batch = render.generation_batch(self.tokenizer, prompts)
        except (ChatError, render.TemplateError) as exc:
            raise BackendError(f"a prompt cannot be given to the policy at {self.path!r}: {exc}") from exc
        return self.generate_batch(batch, n=n, params=params, seed=seed)

    def generate_batch(
        self,
        batch: dict[str, Tensor],
        *,
        n: int,
        params: SamplingParams,
        seed: int,
        stops: Sequence[int] | None = None,
    ) -> list[list[Sample]]:
        """K samples for each row of a left-padded batch (input_ids and attention_mask, (B, T)),
        cut at the first of `stops` (default: the renderer's stop set)."""
        import torch

        stops = list(self.stops if stops is None else stops)
        width = batch["input_ids"].shape[1]
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
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                do_sample=True,
                num_return_sequences=n,
                max_new_tokens=max_new,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                pad_token_id=self.pad_id,
                eos_token_id=stops,
            )  # (B*n, width + new), the n samples of each prompt next to each other
        request = {
            "api": "local",
            "model": self.path,
            "n": n,
            "max_new_tokens": max_new,
            "stop_token_ids": stops,
        }
        results: list[list[Sample]] = [[] for _ in range(batch["input_ids"].shape[0])]
        for row, ids in enumerate(out[:, width:].tolist()):
            stop = render.first_stop(ids, stops)
            kept = ids[:stop] if stop is not None else ids
            results[row // n].append(
                Sample(
                    text=render.strip_special(self.tokenizer, kept),
                    finish_reason="stop" if stop is not None else "length",
                    token_count=len(kept),
                    request=request,
                )
            )
        return results


RETRY_STATUSES = {429, 500, 502, 503, 504}


class _Refused(BackendError):
    """The server answered with a client error (4xx other than 429): retrying will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: Api = "chat",
        tokenizer: Any = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        """`tokenizer` (completions only): the policy's, to render the prompt with its template;
        None renders with the plain fallback template."""
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', not {api!r}")
        self.api: Api = api
        self.url = base_url.rstrip("/") + ("/chat/completions" if api == "chat" else "/completions")
        self.model = model
        self.tokenizer = tokenizer
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.client = httpx.Client(timeout=timeout, headers=self.headers)
        # Until the server shows otherwise (a refusal, or fewer choices), one request asks for K.
        self.n_supported = True

    def generate(
        self, prompts: Sequence[Conversation], *, n: int, params: SamplingParams, seed: int
    ) -> list[list[Sample]]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts) or 1)) as pool:
            return list(pool.map(lambda ip: self._one(ip[1], n, params, seed + ip[0]), enumerate(prompts)))

    def _body(self, conv: Conversation, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if self.api == "chat":
            # The server applies the model's template and stops at the end of the turn.
            body["messages"] = [{"role": m["role"], "content": m["content"]} for m in conv]
            body["logprobs"] = True  # the sampled tokens come back: that is how each is counted
        else:
            body["prompt"], stop = self._prompt_text(conv)
            if stop:
                body["stop"] = stop
            body["logprobs"] = 0
        if params.top_k:
            body["top_k"] = params.top_k  # vLLM and TGI accept it; plain OpenAI does not
        return body

    def _prompt_text(self, conv: Conversation) -> tuple[str, list[str]]:
        """The prompt as text and the stop strings beyond EOS (the template's end of turn)."""
        try:
            if self.tokenizer is None:
                return render.fallback_prompt_text(conv), []
            eos = self.tokenizer.eos_token_id
            stops = [t for t in render.stop_token_ids(self.tokenizer) if t != eos]
            return render.prompt_text(self.tokenizer, conv), list(self.tokenizer.convert_ids_to_tokens(stops))
        except (ChatError, render.TemplateError) as exc:
            raise BackendError(f"a prompt cannot be rendered for {self.url}: {exc}") from exc

    def _one(self, conv: Conversation, n: int, params: SamplingParams, seed: int) -> list[Sample]:
        body = self._body(conv, params)
        if n == 1 or not self.n_supported:
            return self._singly(body, n, seed)
        try:
            got = self._request(body, n, seed)
        except _Refused as exc:
            # OpenAI's reasoning models and some servers refuse n>1: K requests of one instead.
            out = self._singly(body, n, seed)
            self._n_refused(f"refused n={n} ({exc})")
            return out
        if len(got) < n:
            # llama.cpp's server, for one, answers n>1 with one choice: ask for the rest one by one
            # (other seeds: the same seed would give the same sample again).
            self._n_refused(f"answered n={n} with {len(got)} choice(s)")
            got += self._singly(body, n - len(got), seed, first=1)
        return got

    def _n_refused(self, how: str) -> None:
        if self.n_supported:
            log.warning("%s %s; sending one request per completion from now on", self.url, how)
        self.n_supported = False

    def _singly(self, body: dict[str, Any], count: int, seed: int, *, first: int = 0) -> list[Sample]:
        return [s for j in range(count) for s in self._request(body, 1, seed + first + j)]

    def _request(self, body: dict[str, Any], n: int, seed: int) -> list[Sample]:
        sent = {**body, "n": n, "seed": seed}
        data = self._post(sent)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) > n or not choices:
            raise BackendError(f"{self.url} returned {len(choices)} choices, asked for n={n}")
        request = {
            "api": self.api,
            "endpoint": self.url,
            **{k: sent[k] for k in ("model", "n", "max_tokens", "temperature", "top_p", "seed")},
            **({"top_k": sent["top_k"]} if "top_k" in sent else {}),
            **({"stop": sent["stop"]} if "stop" in sent else {}),
        }
        if self.api == "completions":
            own = self.tokenizer is not None and render.has_own_template(self.tokenizer)
            request["template"] = "model" if own else "fallback"
        usage = (data.get("usage") or {}).get("completion_tokens")
        out = []
        for c in choices:
            reason = c.get("finish_reason") or "stop"
            out.append(
                Sample(
                    text=self._text(c).strip(),
                    finish_reason="length" if reason == "length" else "stop",
                    token_count=self._count(c, usage if len(choices) == 1 else None),
                    request=request,
                )
            )
        return out

    def _text(self, choice: dict[str, Any]) -> str:
        if self.api == "chat":
            return str((choice.get("message") or {}).get("content") or "")
        return str(choice.get("text") or "")

    def _count(self, choice: dict[str, Any], usage: int | None) -> int | None:
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            tokens = logprobs.get("content") if self.api == "chat" else logprobs.get("tokens")
            if isinstance(tokens, list):
                return len(tokens)
        return usage

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
                raise _Refused(f"{self.url} refused the request ({last})", last_response.status_code)
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
            api=settings.openai_api,
            tokenizer=policy_tokenizer(version) if settings.openai_api == "completions" else None,
            api_key=settings.openai_api_key,
            concurrency=settings.openai_concurrency,
            timeout=settings.openai_timeout_seconds,
            retries=settings.openai_retries,
        )
    # The base default and demo models are made on first use; every other version is loaded.
    from trainer.models import policy_files

    return LocalBackend(policy_files(version, settings))


def policy_tokenizer(version: ModelVersion) -> Any:
    """The policy's tokenizer, for rendering `/v1/completions` prompts with its template: from its
    folder, or the local Hugging Face cache (never a download in the middle of a job). None when
    neither has it: the prompt is then rendered with the plain fallback template."""
    from transformers import AutoTokenizer

    for where in (version.path, version.source):
        if not where:
            continue
        try:
            if Path(where).is_dir():
                return AutoTokenizer.from_pretrained(where)
            return AutoTokenizer.from_pretrained(where, local_files_only=True)
        except Exception as exc:  # noqa: BLE001  (no tokenizer here: try the next place)
            log.info("no tokenizer at %r (%s: %s)", where, type(exc).__name__, exc)
    log.warning(
        "no tokenizer for policy version %s (%s) on this machine: /v1/completions prompts use the "
        "plain fallback template",
        version.id,
        version.source,
    )
    return None
