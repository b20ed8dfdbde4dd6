"""The `sample` job: K completions for every prompt of a set that has none yet; of a
demonstration set, one draft for every open task that has none (trainer/sampling/drafts.py).

Prompts go to the backend as conversations (`Prompt.messages`), in batches (one batched generate
per group of prompts, K per prompt). Identical and empty completions are sampled again, up to
`duplicate_tries` rounds; identical ones still left are kept and marked, but an empty one is
never shown as a candidate: a prompt whose replies are still empty gets no task, and once every
other prompt is written the job fails naming it.

Each batch is one transaction: its tasks with their K completions each, created open, so
labelers can start while the job runs and no task is ever seen half-filled. A job claimed again
after its worker died starts from the prompts still without a task, and the unique (prompt_id,
sampling_job_id) constraint stops a worker that lost its claim from writing a second set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError

from app.chat import Conversation
from app.config import get_settings
from app.db import refresh_statistics
from app.labeling.models import Task, TaskStatus
from app.prompts.models import Prompt, PromptSet, SetKind, SetStatus
from app.runs import policies
from app.runs.models import ModelVersion
from trainer.runner import JobContext
from trainer.sampling.backends import Backend, BackendError, Sample, SamplingParams, make_backend
from trainer.sampling.drafts import completion, draft_tasks, write_drafts


@dataclass
class SampleConfig:
    prompt_set_id: int
    batch_prompts: int = 16  # prompts per generate call (each gives K rows)
    # Resampling rounds for identical or empty completions; then identical ones are kept and
    # marked, and a prompt with an empty one fails.
    duplicate_tries: int = 3
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
        drafts = prompt_set.kind == SetKind.demonstration
        k = 1 if drafts else prompt_set.k
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
        if not drafts:  # a demonstration set's tasks stay open while their drafts are written
            prompt_set.status = SetStatus.sampling
        # Half of K from each version when two are compared (the first takes the odd one).
        shares = [k] if len(chosen) == 1 else [math.ceil(k / 2), k // 2]
        versions = [_Version(v.id, f"{v.name} (version {v.id})", v.is_demo) for v in chosen]
        set_id = prompt_set.id
        total, pending = draft_tasks(s, set_id) if drafts else _pending(s, set_id)
    # Sessions are closed before anything else writes: a SQLite reader cannot later become a
    # writer once another connection has committed.
    base_seed = cfg.seed if cfg.seed is not None else set_id * 1_000_003
    done = total - len(pending)
    written = duplicates_kept = 0
    failed: list[_Pending] = []
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
            for item, result in zip(batch, per_prompt, strict=True):
                if result is None:
                    failed.append(item)
                    ctx.log(
                        f"{'task' if drafts else 'prompt'} {item[0]}: every reply was empty after "
                        f"{cfg.duplicate_tries} resampling rounds"
                    )
            write = write_drafts if drafts else _write_batch
            new = write(ctx, set_id, batch, per_prompt, params, backends[0].name)
            written += new
            duplicates_kept += sum(r[1] for r in per_prompt if r is not None)
            done += len(batch)
            rate = written / max(time.monotonic() - started, 1e-6)
            ctx.progress(done / total, f"{done}/{total} prompts sampled, {rate:.2f} prompts/s")
        if failed and not drafts:  # a task without a draft is written from scratch
            raise BackendError(_empty_error(failed, total, cfg.duplicate_tries))
    except BaseException:
        # Cancelled or failed: what was sampled is labelable; the set page shows the job's state.
        if not drafts:
            with ctx.session() as s:
                _set_status(s, set_id, SetStatus.active)
        raise
    if not drafts:
        with ctx.session() as s:
            _set_status(s, set_id, SetStatus.active)
            refresh_statistics(s, "task", "assignment")
    return {
        "prompt_set_id": set_id,
        "prompts": total,
        "sampled_now": written,
        "completions": written * k,
        "no_draft": len(failed) if drafts else 0,
        "duplicates_kept": duplicates_kept,
        "versions": [v.id for v in versions],
        "is_demo": any(v.is_demo for v in versions),
    }


_Pending = tuple[int, Conversation]  # (prompt id, its messages)


def _pending(s: Any, set_id: int) -> tuple[int, list[_Pending]]:
    rows = s.execute(
        select(Prompt.id, Prompt.messages, exists().where(Task.prompt_id == Prompt.id))
        .where(Prompt.prompt_set_id == set_id)
        .order_by(Prompt.id)
    ).all()
    return len(rows), [(pid, messages) for pid, messages, has_task in rows if not has_task]


def _empty_error(failed: list[_Pending], total: int, tries: int) -> str:
    ids = ", ".join(str(pid) for pid, _ in failed[:20]) + (", ..." if len(failed) > 20 else "")
    return (
        f"{len(failed)} of {total} prompts (ids {ids}) got only empty replies: the policy ended its "
        f"turn at once in the first sample and in {tries} resampling rounds, so they have no task "
        "(an empty reply is never shown to labelers). Every other prompt was sampled. Look at "
        "those prompts, and at the policy's chat template and generation settings."
    )


def _set_status(s: Any, set_id: int, status: str) -> None:
    prompt_set = s.get(PromptSet, set_id)
    if prompt_set is not None:
        prompt_set.status = status


_Tagged = tuple[int, Sample, int]  # (version id, sample, seed)
_Marked = tuple[list[tuple[_Tagged, bool]], int]  # K (tagged sample, is_duplicate), duplicates left


def _sample_batch(
    batch: list[_Pending],
    versions: list[_Version],
    backends: list[Backend],
    shares: list[int],
    params: SamplingParams,
    seed: int,
    tries: int,
) -> list[_Marked | None]:
    """For each prompt: its K (tagged sample, is_duplicate) and how many duplicates remain, or
    None when a reply is still empty after the resampling rounds (the prompt gets no task)."""
    convs = [c for _, c in batch]
    rows: list[list[_Tagged]] = [[] for _ in batch]
    for version, backend, n in zip(versions, backends, shares, strict=True):
        if n == 0:
            continue
        for i, samples in enumerate(backend.generate(convs, n=n, params=params, seed=seed)):
            rows[i] += [(version.id, smp, seed) for smp in samples]
    out: list[_Marked | None] = []
    for i, row in enumerate(rows):
        row = _resample_duplicates(convs[i], row, versions, backends, params, seed, tries)
        if any(not _norm(smp.text) for _, smp, _ in row):
            out.append(None)
            continue
        seen: set[str] = set()
        marked = []
        for tagged in row:
            key = _norm(tagged[1].text)
            marked.append((tagged, key in seen))
            seen.add(key)
        out.append((marked, sum(1 for _, dup in marked if dup)))
    return out


def _resample_duplicates(
    conv: Conversation,
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
            fresh = by_id[vid].generate([conv], n=len(positions), params=params, seed=retry_seed)[0]
            for p, smp in zip(positions, fresh, strict=True):
                row[p] = (vid, smp, retry_seed)
    return row


def _norm(text: str) -> str:
    return " ".join(text.split())


def _write_batch(
    ctx: JobContext,
    set_id: int,
    batch: list[_Pending],
    per_prompt: list[_Marked | None],
    params: SamplingParams,
    backend_name: str,
) -> int:
    """One transaction per batch: each task with all its completions, or nothing. A prompt
    whose result is None (replies still empty) gets no task. Returns the tasks written."""
    record = {**params.as_dict(), "backend": backend_name}
    written = 0
    try:
        with ctx.session() as s:
            for (prompt_id, _), result in zip(batch, per_prompt, strict=True):
                if result is None:
                    continue
                marked = result[0]
                task = Task(
                    prompt_id=prompt_id,
                    prompt_set_id=set_id,
                    sampling_job_id=ctx.job_id,
                    status=TaskStatus.sampling,
                )
                s.add(task)
                s.flush()
                s.add_all(completion(task.id, tagged, record, duplicate=dup) for tagged, dup in marked)
                # Its K completions exist, in this same transaction: labelers may take it.
                task.status = TaskStatus.open
                written += 1
    except IntegrityError:
        # A worker that lost this job wrote the batch already; the constraint kept one copy.
        ctx.log(f"batch starting at prompt {batch[0][0]} was already written; skipped")
        return 0
    return written
