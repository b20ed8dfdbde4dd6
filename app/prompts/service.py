"""Prompt sets: import a file whole or not at all, enqueue its sampling, report its progress."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from app import chat
from app.chat import Conversation
from app.config import Settings
from app.db import utcnow
from app.errors import Conflict, Invalid, has_nul
from app.labeling.models import Task, TaskStatus
from app.prompts import tokens
from app.prompts.models import DEFAULT_FLAGS, Prompt, PromptSet, SetKind, SetStatus, TrainOn
from app.prompts.parsing import (
    Problem,
    TokenCounter,
    approx_tokens,
    check_stored,
    check_tokens,
    parse_prompt_file,
)
from app.runs import policies
from app.runs import service as jobs
from app.runs.models import FINISHED, Job, JobStatus, ModelVersion

K_MIN, K_MAX = 4, 9
OVERLAP_MAX = 100
MAX_FLAGS = 30
SAMPLING_DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


class ImportRejected(Invalid):
    """The upload was refused; `problems` says where and why. Nothing was stored."""

    def __init__(self, problems: list[Problem], truncated: bool = False) -> None:
        first = problems[0]
        super().__init__(first.field, first.message, file=first.file, line=first.line)
        self.problems, self.truncated = problems, truncated
        self.args = ("; ".join(str(p) for p in problems[:3]),)


# --- tokens ----------------------------------------------------------------------------------


def token_counter(version: ModelVersion | None) -> tuple[TokenCounter, str]:
    """The policy's own tokenizer and chat template when its folder has them, else an estimate."""
    if version is not None and version.path:
        try:
            counter = tokens.conversation_counter(Path(version.path))
        except Exception:  # noqa: BLE001  (an unreadable tokenizer falls back, and says so)
            counter = None
        if counter is not None:
            return counter, "policy tokenizer and chat template"
    return approx_tokens, "approximate (words, or characters / 4, and 4 a turn)"


def context_positions(version: ModelVersion | None) -> int | None:
    """How many tokens the policy sees at once, from its folder's config.json (None: unknown)."""
    if version is None or not version.path:
        return None
    try:
        config = json.loads((Path(version.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    return positions if isinstance(positions, int) and positions > 0 else None


def token_limit(
    *, settings: Settings, version: ModelVersion | None, sampling: dict[str, Any]
) -> tuple[int, str]:
    """The most tokens a prompt may take after the chat template, and the limit's name.

    A prompt must leave the policy room to write; past its context the sampling job would fail.
    """
    max_tokens, limit_name = settings.max_prompt_tokens, "RANKLAB_MAX_PROMPT_TOKENS"
    positions, new_tokens = context_positions(version), sampling.get("max_new_tokens")
    if (
        positions is not None
        and isinstance(new_tokens, int)
        and 0 < new_tokens < positions
        and positions - new_tokens < max_tokens
    ):
        max_tokens = positions - new_tokens
        limit_name = f"the policy's {positions} positions less max_new_tokens {new_tokens}"
    return max_tokens, limit_name


# --- import ----------------------------------------------------------------------------------


def check_options(
    *,
    session: Session,
    filename: str,
    name: str,
    k: int,
    overlap: int,
    sampling: dict[str, Any],
    policy_version_id: int | None,
    compare_version_id: int | None,
) -> list[Problem]:
    problems: list[Problem] = []

    def bad(fld: str, message: str) -> None:
        problems.append(Problem(filename, None, fld, message))

    if not name.strip():
        bad("name", "a prompt set needs a name")
    elif len(name) > 200:
        bad("name", "at most 200 characters")
    elif has_nul(name):  # PostgreSQL cannot even look such a name up
        bad("name", "contains a NUL character (\\u0000)")
    elif session.scalar(select(PromptSet.id).where(PromptSet.name == name.strip())) is not None:
        bad("name", f"a prompt set named {name.strip()!r} already exists; choose another name")
    if not K_MIN <= k <= K_MAX:
        bad("k", f"K must be between {K_MIN} and {K_MAX}, got {k}")
    if not 1 <= overlap <= OVERLAP_MAX:
        bad("overlap", f"overlap must be between 1 and {OVERLAP_MAX}, got {overlap}")
    mnt, temp = sampling.get("max_new_tokens"), sampling.get("temperature")
    top_p, top_k = sampling.get("top_p"), sampling.get("top_k")
    if not isinstance(mnt, int) or not 1 <= mnt <= 4096:
        bad("max_new_tokens", f"must be a whole number from 1 to 4096, got {mnt}")
    if not isinstance(temp, int | float) or not 0 < temp <= 5:
        bad("temperature", f"must be above 0 and at most 5, got {temp}")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        bad("top_p", f"must be above 0 and at most 1, got {top_p}")
    if not isinstance(top_k, int) or top_k < 0:
        bad("top_k", f"must be 0 (off) or a positive whole number, got {top_k}")
    for fld, vid in (("policy_version", policy_version_id), ("compare_version", compare_version_id)):
        if vid is not None and policies.get_policy(session=session, version_id=vid) is None:
            bad(fld, f"no policy version with id {vid}")
    if compare_version_id is not None and compare_version_id == policy_version_id:
        bad("compare_version", "must differ from the policy version")
    return problems


def import_prompt_set(
    *,
    session: Session,
    settings: Settings,
    name: str,
    filename: str,
    data: bytes,
    fmt: str | None = None,
    k: int = 4,
    overlap: int = 1,
    sampling: dict[str, Any] | None = None,
    policy_version_id: int | None = None,
    compare_version_id: int | None = None,
    flags: list[str] | None = None,
    created_by_id: int | None = None,
    enqueue: bool = True,
) -> PromptSet:
    """Validate everything, then store the set, its prompts and a `sample` job; or raise
    ImportRejected having stored nothing."""
    params = {**SAMPLING_DEFAULTS, **(sampling or {})}
    problems = check_options(
        session=session,
        filename=filename,
        name=name,
        k=k,
        overlap=overlap,
        sampling=params,
        policy_version_id=policy_version_id,
        compare_version_id=compare_version_id,
    )
    flag_set = [f.strip() for f in (flags or []) if f.strip()] or list(DEFAULT_FLAGS)
    if len(flag_set) > MAX_FLAGS:
        problems.append(Problem(filename, None, "flags", f"at most {MAX_FLAGS} flags, got {len(flag_set)}"))
    for flag in flag_set:
        if has_nul(flag):
            problems.append(Problem(filename, None, "flags", "a flag contains a NUL character (\\u0000)"))
        if len(flag) > 200:
            problems.append(
                Problem(filename, None, "flags", f"a flag of {len(flag)} characters; at most 200")
            )
    if len(set(flag_set)) != len(flag_set):
        problems.append(Problem(filename, None, "flags", "the same flag is listed twice"))
    version = None
    if not any(p.field in ("policy_version", "compare_version") for p in problems):
        version = (
            policies.get_policy(session=session, version_id=policy_version_id)
            if policy_version_id is not None
            else policies.default_policy(session=session, settings=settings)
        )
    counter, counted_with = token_counter(version)
    positions, new_tokens = context_positions(version), params.get("max_new_tokens")
    if positions is not None and isinstance(new_tokens, int) and 0 < positions <= new_tokens:
        problems.append(
            Problem(
                filename,
                None,
                "max_new_tokens",
                f"must be below the {positions} tokens the policy sees at once, got {new_tokens}",
            )
        )
    max_tokens, limit_name = token_limit(settings=settings, version=version, sampling=params)
    parsed = parse_prompt_file(
        filename=filename,
        data=data,
        fmt=fmt,
        max_bytes=settings.max_upload_bytes,
        max_tokens=max_tokens,
        count_tokens=counter,
        limit_name=limit_name,
    )
    problems += parsed.problems
    if problems:
        raise ImportRejected(problems, truncated=parsed.truncated)
    assert version is not None
    prompt_set = PromptSet(
        name=name.strip(),
        k=k,
        overlap=overlap,
        sampling=params,
        policy_version_id=version.id,
        compare_version_id=compare_version_id,
        flags=flag_set,
        status=SetStatus.sampling if enqueue else SetStatus.active,
        source_filename=filename.replace("\x00", "")[:500],
        created_by_id=created_by_id,
        report={
            "rows": parsed.rows,
            "imported": len(parsed.prompts),
            "duplicates": parsed.duplicates,
            "duplicate_lines": parsed.duplicate_lines,
            "tokens_counted_with": counted_with,
        },
    )
    session.add(prompt_set)
    session.flush()
    session.add_all(
        Prompt(
            prompt_set_id=prompt_set.id,
            messages=p.messages,
            text=p.text,
            text_hash=p.hash,
            meta=p.meta,
            source_line=p.line,
        )
        for p in parsed.prompts
    )
    session.flush()
    if enqueue:
        start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)
    return prompt_set


def start_sampling(*, session: Session, prompt_set: PromptSet, created_by_id: int | None = None) -> Job:
    """Queue a `sample` job for the set's prompts that have no task yet."""
    job = jobs.enqueue(
        session=session, kind="sample", params={"prompt_set_id": prompt_set.id}, created_by_id=created_by_id
    )
    prompt_set.status = SetStatus.sampling
    prompt_set.report = {**prompt_set.report, "job_id": job.id}
    session.flush()
    return job


# --- one prompt at a time (a labeler's written prompt, accepted) -------------------------------


def check_conversation(
    *, session: Session, settings: Settings, prompt_set: PromptSet, value: Any, field: str = "messages"
) -> Conversation:
    """A conversation checked by the rules of an upload into `prompt_set` (app/chat.py's rules,
    storable text, the token limit of the set's policy), normalised; Invalid naming the place."""
    version = (
        policies.get_policy(session=session, version_id=prompt_set.policy_version_id)
        if prompt_set.policy_version_id is not None
        else policies.active_policy(session=session)
    )
    counter, _ = token_counter(version)
    max_tokens, limit_name = token_limit(
        settings=settings, version=version, sampling=prompt_set.sampling or {}
    )
    try:
        conv = chat.parse_conversation(value, field=field)
        check_stored(conv, field=field)
        check_tokens(conv, field=field, max_tokens=max_tokens, count_tokens=counter, limit_name=limit_name)
    except chat.ChatError as exc:
        raise Invalid(exc.field, exc.message) from None
    return conv


def find_duplicate(*, session: Session, prompt_set: PromptSet, messages: Conversation) -> Prompt | None:
    return session.scalar(
        select(Prompt).where(
            Prompt.prompt_set_id == prompt_set.id, Prompt.text_hash == chat.conversation_hash(messages)
        )
    )


def add_prompt(
    *,
    session: Session,
    prompt_set: PromptSet,
    messages: Conversation,
    meta: dict[str, Any] | None = None,
    created_by_id: int | None = None,
) -> Prompt:
    """One checked conversation into a set, with the task an imported prompt gets; Conflict
    naming the existing prompt when the set holds the same conversation."""
    existing = find_duplicate(session=session, prompt_set=prompt_set, messages=messages)
    if existing is not None:
        raise Conflict(
            f"The set {prompt_set.name!r} (id {prompt_set.id}) already holds this conversation "
            f"as prompt {existing.id}."
        )
    prompt = Prompt(
        prompt_set_id=prompt_set.id,
        messages=messages,
        text=chat.as_text(messages),
        text_hash=chat.conversation_hash(messages),
        meta=meta or {},
    )
    session.add(prompt)
    session.flush()
    open_tasks(session=session, prompt_set=prompt_set, created_by_id=created_by_id)
    return prompt


def open_tasks(*, session: Session, prompt_set: PromptSet, created_by_id: int | None = None) -> None:
    """Tasks for the set's prompts that have none: a demonstration set's open at once (labelers
    write the reply; no completions needed); a ranking set's come from a `sample` job, queued
    unless one is queued already (it reads the prompts without a task when it starts)."""
    if prompt_set.kind == SetKind.demonstration:
        waiting = session.scalars(
            select(Prompt.id).where(
                Prompt.prompt_set_id == prompt_set.id, ~exists().where(Task.prompt_id == Prompt.id)
            )
        ).all()
        session.add_all(
            Task(prompt_id=pid, prompt_set_id=prompt_set.id, status=TaskStatus.open) for pid in waiting
        )
        session.flush()
        return
    job = sampling_job(session=session, prompt_set=prompt_set)
    if job is None or job.status != JobStatus.queued:
        start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)


# --- reading ---------------------------------------------------------------------------------


def list_sets(*, session: Session) -> list[PromptSet]:
    return list(session.scalars(select(PromptSet).order_by(PromptSet.id.desc())))


def get_set(*, session: Session, set_id: int) -> PromptSet | None:
    return session.get(PromptSet, set_id)


def get_set_by_name(*, session: Session, name: str) -> PromptSet | None:
    return session.scalar(select(PromptSet).where(PromptSet.name == name))


def sampling_job(*, session: Session, prompt_set: PromptSet) -> Job | None:
    job_id = (prompt_set.report or {}).get("job_id")
    return session.get(Job, job_id) if job_id else None


@dataclass
class Progress:
    total: int
    done: int
    job: Job | None
    rate: float | None  # prompts per second over this job's run
    eta_seconds: float | None

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.status in (JobStatus.queued, JobStatus.running)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "rate_per_s": self.rate,
            "eta_seconds": self.eta_seconds,
            "job": None
            if self.job is None
            else {
                "id": self.job.id,
                "status": self.job.status,
                "message": self.job.message,
                "error": self.job.error,
            },
        }


def progress(*, session: Session, prompt_set: PromptSet) -> Progress:
    total = (
        session.scalar(select(func.count()).select_from(Prompt).where(Prompt.prompt_set_id == prompt_set.id))
        or 0
    )
    done = (
        session.scalar(
            select(func.count(func.distinct(Task.prompt_id))).where(
                Task.prompt_set_id == prompt_set.id, Task.status != TaskStatus.sampling
            )
        )
        or 0
    )
    job = sampling_job(session=session, prompt_set=prompt_set)
    rate = eta = None
    if job is not None and job.status == JobStatus.running and job.started_at is not None:
        by_job = (
            session.scalar(select(func.count()).select_from(Task).where(Task.sampling_job_id == job.id)) or 0
        )
        elapsed = (utcnow() - job.started_at).total_seconds()
        if by_job and elapsed > 0:
            rate = by_job / elapsed
            eta = (total - done) / rate
    return Progress(total=total, done=done, job=job, rate=rate, eta_seconds=eta)


def cancel_sampling(*, session: Session, prompt_set: PromptSet) -> Job | None:
    job = sampling_job(session=session, prompt_set=prompt_set)
    if job is not None and job.status not in FINISHED:
        jobs.request_cancel(session=session, job=job)
        if job.status == JobStatus.cancelled:  # it had not started: nothing else will update the set
            prompt_set.status = SetStatus.active
            session.flush()
    return job


def resume_sampling(
    *, session: Session, prompt_set: PromptSet, created_by_id: int | None = None
) -> Job | None:
    """After a cancel or a failure: sample the prompts still without completions."""
    job = sampling_job(session=session, prompt_set=prompt_set)
    if job is not None and job.status not in FINISHED:
        return job
    prog = progress(session=session, prompt_set=prompt_set)
    if prog.done >= prog.total:
        return None
    return start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)


def sample_tasks(*, session: Session, prompt_set: PromptSet, limit: int = 20) -> list[Task]:
    return list(
        session.scalars(
            select(Task)
            .where(Task.prompt_set_id == prompt_set.id, Task.status != TaskStatus.sampling)
            .order_by(Task.id)
            .limit(limit)
        )
    )


def prompts_page(*, session: Session, prompt_set: PromptSet, limit: int = 50) -> list[Prompt]:
    return list(
        session.scalars(
            select(Prompt).where(Prompt.prompt_set_id == prompt_set.id).order_by(Prompt.id).limit(limit)
        )
    )


def versions_by_id(*, session: Session, ids: set[int]) -> dict[int, ModelVersion]:
    if not ids:
        return {}
    return {mv.id: mv for mv in session.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids)))}


# --- per-set settings ------------------------------------------------------------------------


def update_settings(*, session: Session, prompt_set: PromptSet, train_on: str, allow_proposals: bool) -> None:
    """Which demonstrations count for training, and whether labelers may write prompts for it."""
    if train_on not in set(TrainOn):
        raise Invalid("train_on", f"{train_on!r} is not one of: {', '.join(TrainOn)}")
    prompt_set.train_on = train_on
    prompt_set.allow_proposals = allow_proposals
    session.flush()
