"""The `sample` job: K completions for every prompt of a set that has none yet.

Prompts go through the backend in batches (one batched generate per group of prompts, K per
prompt). Each batch is one transaction: its tasks with their K completions each, created open,
so labelers can start while the job runs and no task is ever seen half-filled. A job claimed
again after its worker died starts from the prompts still without a task, and the unique
(prompt_id, sampling_job_id) constraint stops a worker that lost its claim from writing a
second set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError

from app.config import get_settings
from app.labeling.models import Completion, Task, TaskStatus
from app.prompts.models import Prompt, PromptSet, SetStatus
from app.runs import policies
from app.runs.models import ModelVersion
from trainer.runner import JobContext
from trainer.sampling.backends import Backend, BackendError, Sample, SamplingParams, make_backend


@dataclass
class SampleConfig:
    prompt_set_id: int
    batch_prompts: int = 16  # prompts per generate call (each gives K rows)
    duplicate_tries: int = 3  # resampling rounds for identical completions, then kept and marked
    seed: int | None = None  # base seed; default derived from the set id, so reruns repeat

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SampleConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclass
class _Version:
    id: int
    label: str
    is_demo: bool


def run_job(ctx: JobContext) -> dict[str, Any]:
    cfg = SampleConfig.from_params(ctx.params)
    settings = get_settings()
    with ctx.session() as s:
        prompt_set = s.get(PromptSet, cfg.prompt_set_id)
        if prompt_set is None:
            raise LookupError(f"prompt set {cfg.prompt_set_id} does not exist")
        k = prompt_set.k
        params = SamplingParams.from_dict(prompt_set.sampling or {})
        main = (
            s.get(ModelVersion, prompt_set.policy_version_id)
            if prompt_set.policy_version_id
            else policies.default_policy(session=s, settings=settings)
        )
        assert main is not None
        chosen = [main]
        if prompt_set.compare_version_id:
            other = s.get(ModelVersion, prompt_set.compare_version_id)
            if other is None:
                raise LookupError(f"compare policy version {prompt_set.compare_version_id} is gone")
            chosen.append(other)
        prompt_set.status = SetStatus.sampling
        # Half of K from each version when two are compared (the first takes the odd one).
        shares = [k] if len(chosen) == 1 else [math.ceil(k / 2), k // 2]
        versions = [_Version(v.id, f"{v.name} (version {v.id})", v.is_demo) for v in chosen]
        set_id = prompt_set.id
        total, pending = _pending(s, set_id)
    # Sessions are closed before anything else writes: a SQLite reader cannot later become a
    # writer once another connection has committed.
    base_seed = cfg.seed if cfg.seed is not None else set_id * 1_000_003
    done = total - len(pending)
    written = duplicates_kept = 0
    started = time.monotonic()
    try:
        ctx.progress(done / total if total else 1.0, "loading the policy")
        backends: list[Backend] = []
        for v in chosen:
            ctx.log(f"loading policy {v.name} (version {v.id}, source {v.source})")
            try:
                backends.append(make_backend(v, settings))
            except BackendError as exc:
                raise BackendError(f"policy version {v.id} ({v.source}): {exc}") from exc
        ctx.progress(done / total if total else 1.0, f"{done}/{total} prompts sampled")
        for start in range(0, len(pending), cfg.batch_prompts):
            batch = pending[start : start + cfg.batch_prompts]
            seed = base_seed + batch[0][0]  # the same batch draws the same samples when rerun
            per_prompt = _sample_batch(batch, versions, backends, shares, params, seed, cfg.duplicate_tries)
            new = _write_batch(ctx, set_id, batch, per_prompt, params, backends[0].name)
            written += new
            duplicates_kept += sum(d for _, d in per_prompt)
            done += len(batch)
            rate = written / max(time.monotonic() - started, 1e-6)
            ctx.progress(done / total, f"{done}/{total} prompts sampled, {rate:.2f} prompts/s")
    except BaseException:
        # Cancelled or failed: what was sampled is labelable; the set page shows the job's state.
        with ctx.session() as s:
            _set_status(s, set_id, SetStatus.active)
        raise
    with ctx.session() as s:
        _set_status(s, set_id, SetStatus.active)
    return {
        "prompt_set_id": set_id,
        "prompts": total,
        "sampled_now": written,
        "completions": written * k,
        "duplicates_kept": duplicates_kept,
        "versions": [v.id for v in versions],
        "is_demo": any(v.is_demo for v in versions),
    }


def _pending(s: Any, set_id: int) -> tuple[int, list[tuple[int, str]]]:
    rows = s.execute(
        select(Prompt.id, Prompt.text, exists().where(Task.prompt_id == Prompt.id))
        .where(Prompt.prompt_set_id == set_id)
        .order_by(Prompt.id)
    ).all()
    return len(rows), [(pid, text) for pid, text, has_task in rows if not has_task]


def _set_status(s: Any, set_id: int, status: str) -> None:
    prompt_set = s.get(PromptSet, set_id)
    if prompt_set is not None:
        prompt_set.status = status


_Tagged = tuple[int, Sample, int]  # (version id, sample, seed)


def _sample_batch(
    batch: list[tuple[int, str]],
    versions: list[_Version],
    backends: list[Backend],
    shares: list[int],
    params: SamplingParams,
    seed: int,
    tries: int,
) -> list[tuple[list[tuple[_Tagged, bool]], int]]:
    """For each prompt: its K (tagged sample, is_duplicate) and how many duplicates remain."""
    texts = [t for _, t in batch]
    rows: list[list[_Tagged]] = [[] for _ in batch]
    for version, backend, n in zip(versions, backends, shares, strict=True):
        if n == 0:
            continue
        for i, samples in enumerate(backend.generate(texts, n=n, params=params, seed=seed)):
            rows[i] += [(version.id, smp, seed) for smp in samples]
    out = []
    for i, row in enumerate(rows):
        row = _resample_duplicates(texts[i], row, versions, backends, params, seed, tries)
        seen: set[str] = set()
        marked = []
        for tagged in row:
            key = _norm(tagged[1].text)
            marked.append((tagged, key in seen))
            seen.add(key)
        out.append((marked, sum(1 for _, dup in marked if dup)))
    return out


def _resample_duplicates(
    text: str,
    row: list[_Tagged],
    versions: list[_Version],
    backends: list[Backend],
    params: SamplingParams,
    seed: int,
    tries: int,
) -> list[_Tagged]:
    by_id = {v.id: b for v, b in zip(versions, backends, strict=True)}
    for attempt in range(1, tries + 1):
        seen: set[str] = set()
        dup_positions: list[int] = []
        for pos, (_, smp, _) in enumerate(row):
            key = _norm(smp.text)
            if key in seen or not key:  # an empty completion is as useless as a repeated one
                dup_positions.append(pos)
            seen.add(key)
        if not dup_positions:
            break
        retry_seed = seed + attempt * 7919
        for vid in {row[p][0] for p in dup_positions}:
            positions = [p for p in dup_positions if row[p][0] == vid]
            fresh = by_id[vid].generate([text], n=len(positions), params=params, seed=retry_seed)[0]
            for p, smp in zip(positions, fresh, strict=True):
                row[p] = (vid, smp, retry_seed)
    return row


def _norm(text: str) -> str:
    return " ".join(text.split())


def _write_batch(
    ctx: JobContext,
    set_id: int,
    batch: list[tuple[int, str]],
    per_prompt: list[tuple[list[tuple[_Tagged, bool]], int]],
    params: SamplingParams,
    backend_name: str,
) -> int:
    """One transaction per batch: each task with all its completions, or nothing."""
    record = {**params.as_dict(), "backend": backend_name}
    try:
        with ctx.session() as s:
            for (prompt_id, _), (marked, _) in zip(batch, per_prompt, strict=True):
                task = Task(
                    prompt_id=prompt_id,
                    prompt_set_id=set_id,
                    sampling_job_id=ctx.job_id,
                    status=TaskStatus.sampling,
                )
                s.add(task)
                s.flush()
                s.add_all(
                    Completion(
                        task_id=task.id,
                        model_version_id=vid,
                        text=smp.text,
                        params=record,
                        seed=seed,
                        finish_reason=smp.finish_reason,
                        token_count=smp.token_count,
                        is_duplicate=dup,
                    )
                    for (vid, smp, seed), dup in marked
                )
                # Its K completions exist, in this same transaction: labelers may take it.
                task.status = TaskStatus.open
    except IntegrityError:
        # A worker that lost this job wrote the batch already; the constraint kept one copy.
        ctx.log(f"batch starting at prompt {batch[0][0]} was already written; skipped")
        return 0
    return len(batch)
