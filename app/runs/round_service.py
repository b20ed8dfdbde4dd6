"""The round, its database side: reward model on all data → PPO → promote → resample; with
`sft` and demonstrations newer than the last SFT policy, SFT on them first (InstructGPT step 1),
whose policy is PPO's start and KL reference.

`enqueue_round` writes the whole chain at once (Job.after_id links each step to the one before),
so the dashboard shows every step from the start, and a failed step stops the rest
(app/runs/service.fail_broken_chains says which step failed). The resampling happens in fresh
copies of the chosen prompt sets — "<name> · round <n>" — because the sample job fills only
prompts that have no task yet; the copies wait, empty and marked "sampling" (their report links
the sample job), until the promote step points them at the new policy (and, with mixing, at the
old one too, so each task holds both).

Pure database code (no torch): the dashboard's button and `ranklab round` call `enqueue_round`;
the worker's `promote` handler (trainer/runner.py) calls `promote`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.exports.sft import counts_for_training
from app.labeling.models import Annotation, Demonstration, Task
from app.prompts.models import Prompt, PromptSet, SetKind, SetStatus
from app.runs import models_service as registry
from app.runs import service as jobs
from app.runs.models import Job, JobStatus, ModelKind, ModelVersion


class RoundError(ValueError):
    """A round that cannot start; the message says why."""


@dataclass
class Round:
    reward_job: Job
    ppo_job: Job
    promote_job: Job
    sample_jobs: list[Job]
    new_sets: list[PromptSet]
    sft_job: Job | None = None

    @property
    def jobs(self) -> list[Job]:
        first = [self.sft_job] if self.sft_job is not None else []
        return [*first, self.reward_job, self.ppo_job, self.promote_job, *self.sample_jobs]


def last_sft_policy(*, session: Session) -> ModelVersion | None:
    """The newest policy version a train_sft job made."""
    return session.scalar(
        select(ModelVersion)
        .join(Job, Job.id == ModelVersion.job_id)
        .where(ModelVersion.kind == ModelKind.policy, Job.kind == "train_sft")
        .order_by(ModelVersion.id.desc())
        .limit(1)
    )


def new_demonstrations(*, session: Session) -> int:
    """Demonstrations that count for training written after the last SFT policy was made (all
    of them when there is none)."""
    last = last_sft_policy(session=session)
    q = (
        select(func.count())
        .select_from(Demonstration)
        .join(Annotation, Annotation.id == Demonstration.annotation_id)
        .join(Task, Task.id == Annotation.task_id)
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .where(counts_for_training())
    )
    if last is not None:
        q = q.where(Annotation.created_at > last.created_at)
    return session.scalar(q) or 0


def round_sets(*, session: Session, names: list[str] | None = None) -> list[PromptSet]:
    """The sets a round resamples: those named, or every active ranking set."""
    if names:
        found = {ps.name: ps for ps in session.scalars(select(PromptSet).where(PromptSet.name.in_(names)))}
        missing = [n for n in names if n not in found]
        if missing:
            raise RoundError(f"no prompt set named {', '.join(repr(m) for m in missing)}")
        return [found[n] for n in names]
    return list(
        session.scalars(
            select(PromptSet)
            .where(PromptSet.status == SetStatus.active, PromptSet.kind != SetKind.demonstration)
            .order_by(PromptSet.id)
        )
    )


def _copy_name(session: Session, name: str) -> str:
    base = name.split(" · round ")[0][:180]
    n = 2
    while session.scalar(select(PromptSet.id).where(PromptSet.name == f"{base} · round {n}")) is not None:
        n += 1
    return f"{base} · round {n}"


def _copy_set(session: Session, source: PromptSet, created_by_id: int | None) -> PromptSet:
    copy = PromptSet(
        name=_copy_name(session, source.name),
        k=source.k,
        overlap=source.overlap,
        sampling=dict(source.sampling or {}),
        flags=list(source.flags or []),
        # "sampling" as the prompts page shows a set whose sample job is queued (report.job_id).
        status=SetStatus.sampling,
        created_by_id=created_by_id,
        source_filename=source.source_filename,
    )
    session.add(copy)
    session.flush()
    for p in session.scalars(select(Prompt).where(Prompt.prompt_set_id == source.id).order_by(Prompt.id)):
        session.add(
            Prompt(
                prompt_set_id=copy.id,
                messages=list(p.messages),
                text=p.text,
                text_hash=p.text_hash,
                meta=dict(p.meta or {}),
                source_line=p.source_line,
            )
        )
    session.flush()
    n = session.scalar(select(func.count()).select_from(Prompt).where(Prompt.prompt_set_id == copy.id)) or 0
    copy.report = {
        "round_of": source.id,
        "round_of_name": source.name,
        "rows": n,
        "imported": n,
        "duplicates": 0,
    }
    return copy


def enqueue_round(
    *,
    session: Session,
    sets: list[str] | None = None,
    mix: bool = False,
    created_by_id: int | None = None,
    reward_params: dict[str, Any] | None = None,
    ppo_params: dict[str, Any] | None = None,
    max_attempts: int = 3,
    sft: bool = False,
    sft_params: dict[str, Any] | None = None,
) -> Round:
    """Queue train_reward (all data) → train_ppo (the sets' prompts) → promote → sample per set;
    with `sft` and new demonstrations (new_demonstrations), train_sft (every demonstration that
    counts) first: the reward model waits for it and PPO starts from its policy."""
    chosen = round_sets(session=session, names=sets)
    if not chosen:
        raise RoundError("no prompt sets to resample: upload one, or name sets explicitly")
    names = [ps.name for ps in chosen]
    empty = [
        ps.name
        for ps in chosen
        if session.scalar(select(Prompt.id).where(Prompt.prompt_set_id == ps.id).limit(1)) is None
    ]
    if empty:
        raise RoundError(f"prompt set(s) without prompts: {', '.join(empty)}")
    sft_job = None
    if sft and new_demonstrations(session=session):
        sft_job = jobs.enqueue(
            session=session,
            kind="train_sft",
            params={},
            created_by_id=created_by_id,
            max_attempts=max_attempts,
        )
    reward = jobs.enqueue(
        session=session,
        kind="train_reward",
        params=dict(reward_params or {}),
        created_by_id=created_by_id,
        after=sft_job,
        max_attempts=max_attempts,
    )
    start = {"policy_from_job": sft_job.id} if sft_job is not None else {}
    ppo = jobs.enqueue(
        session=session,
        kind="train_ppo",
        params={**(ppo_params or {}), **start, "sets": names, "reward_from_job": reward.id},
        created_by_id=created_by_id,
        after=reward,
        max_attempts=max_attempts,
    )
    copies = [_copy_set(session, ps, created_by_id) for ps in chosen]
    promote = jobs.enqueue(
        session=session,
        kind="promote",
        params={
            "policy_from_job": ppo.id,
            "reward_from_job": reward.id,
            "mix": mix,
            "prompt_set_ids": [c.id for c in copies],
        },
        created_by_id=created_by_id,
        after=ppo,
        max_attempts=max_attempts,
    )
    samples = [
        jobs.enqueue(
            session=session,
            kind="sample",
            params={"prompt_set_id": c.id},
            created_by_id=created_by_id,
            after=promote,
            max_attempts=max_attempts,
        )
        for c in copies
    ]
    for c, job in zip(copies, samples, strict=True):
        c.report = {**c.report, "job_id": job.id}  # the set page links its sampling job
    session.flush()
    return Round(
        reward_job=reward,
        ppo_job=ppo,
        promote_job=promote,
        sample_jobs=samples,
        new_sets=copies,
        sft_job=sft_job,
    )


def made_by(session: Session, kind: str, job_id: int) -> ModelVersion:
    mv = session.scalar(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.job_id == job_id))
    if mv is None:
        raise ValueError(f"job {job_id} registered no {kind} model")
    return mv


def promote(*, session: Session, params: dict[str, Any], job_id: int | None = None) -> dict[str, Any]:
    """Make the round's policy (and reward model) active and point the round's sets at them."""
    if params.get("model_version_id"):
        policy = registry.get_model(session=session, model_id=int(params["model_version_id"]))
    elif params.get("policy_from_job"):
        policy = made_by(session, ModelKind.policy, int(params["policy_from_job"]))
    else:
        raise ValueError("promote needs model_version_id or policy_from_job")
    old = registry.active(session=session, kind=ModelKind.policy)
    old_id = old.id if old is not None and old.id != policy.id else policy.parent_id
    registry.promote_policy(session=session, model=policy)
    out: dict[str, Any] = {"policy_version_id": policy.id, "previous_policy_id": old_id}
    if params.get("reward_from_job"):
        reward = made_by(session, ModelKind.reward, int(params["reward_from_job"]))
        registry.activate_reward(session=session, model=reward)
        out["reward_version_id"] = reward.id
    mix = bool(params.get("mix")) and old_id is not None
    for set_id in params.get("prompt_set_ids") or []:
        ps = session.get(PromptSet, int(set_id))
        if ps is None:
            raise ValueError(f"prompt set {set_id} of this round was deleted")
        ps.policy_version_id = policy.id
        ps.compare_version_id = old_id if mix else None
    if job_id is not None:
        # Record in the queued sample steps which policy they will sample (the dashboard shows params).
        for job in session.scalars(
            select(Job).where(Job.after_id == job_id, Job.kind == "sample", Job.status == JobStatus.queued)
        ):
            job.params = {
                **job.params,
                "policy_version_id": policy.id,
                **({"compare_version_id": old_id} if mix else {}),
            }
    session.flush()
    out["mixed_with"] = old_id if mix else None
    return out
