"""The `train_ppo` job: prompts from the database → PPO → a new policy version, not yet active.

params:
  sets               prompt set names to draw prompts from (empty: every set not archived)
  reward_version_id  the reward model to use (default: the active one)
  reward_from_job    or: the reward model a train_reward job made (the round uses this)
  policy_from_job    start from (and keep as the KL reference) the policy a train_sft job made
                     (a round with --sft); default: the active policy
  ptx_file           a JSON Lines file of {"text": ...} for PPO-ptx; without it, and with
                     ptx_coef > 0, the chosen (rank 1) completions of the labeled data
  any PPOConfig field (iterations, beta, ptx_coef, learning_rate, batch_size, ...)

The policy starts from the active policy (the base or demo one if none was promoted). The new
version lands in <artifacts>/policy/job-<id>; checkpoints in <artifacts>/checkpoints/ppo-job-<id>,
which a reclaimed job resumes from. A cancelled or failed run deletes them and registers nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from app.chat import Conversation, parse_conversation
from app.config import get_settings
from app.labeling.models import AnnotationItem, Completion, Task
from app.prompts.models import Prompt, PromptSet, SetStatus
from app.runs import models_service, policies
from app.runs.models import Job, JobMetric, ModelKind, ModelVersion
from app.runs.params import TRAIN_PPO
from app.runs.ptx import ptx_texts
from app.runs.round_service import made_by
from trainer.jobs import Trained, save_policy
from trainer.ppo.config import PPOConfig
from trainer.ppo.train import Summary, checkpoint_iteration, train

# The job's own inputs (what to train on and from); the round adds reward_from_job.
OWN_KEYS = {p.name for p in TRAIN_PPO.role("data")} | {"reward_from_job", "policy_from_job"}
MAX_PTX_TEXTS = 20_000
SAMPLES_KEPT = 40  # rows of the samples table kept in the job's result


def paths_for(job_id: int, artifacts: Path | None = None) -> tuple[Path, Path]:
    """(model folder, checkpoint folder) of a train_ppo job."""
    root = Path(artifacts or get_settings().artifacts_dir).resolve()
    return root / "policy" / f"job-{job_id}", root / "checkpoints" / f"ppo-job-{job_id}"


def config_from_params(params: dict[str, Any]) -> PPOConfig:
    return PPOConfig.from_dict(PPOConfig.known_params(params, job="train_ppo", own=OWN_KEYS))


def load_prompts(session: Any, set_names: list[str]) -> tuple[list[Conversation], list[int]]:
    """The prompts (conversations: Prompt.messages) of the named sets (all sets not archived when
    none are named) and the set ids."""
    if set_names:
        found = {
            ps.name: ps for ps in session.scalars(select(PromptSet).where(PromptSet.name.in_(set_names)))
        }
        missing = [n for n in set_names if n not in found]
        if missing:
            known = sorted(session.scalars(select(PromptSet.name)))
            raise ValueError(
                f"no prompt set named {', '.join(repr(m) for m in missing)} "
                f"(known: {', '.join(known) or 'none'})"
            )
        ids = [found[n].id for n in set_names]
    else:
        ids = list(session.scalars(select(PromptSet.id).where(PromptSet.status != SetStatus.archived)))
    rows = session.execute(
        select(Prompt.id, Prompt.messages).where(Prompt.prompt_set_id.in_(ids)).order_by(Prompt.id)
    ).all()
    return [parse_conversation(messages, field=f"prompt {pid} messages") for pid, messages in rows], ids


def load_ptx_texts(session: Any, ptx_file: str | None) -> tuple[list[str], str]:
    """Pretraining texts for PPO-ptx and where they came from."""
    if ptx_file:
        path = Path(ptx_file)
        if not path.is_file():
            raise ValueError(f"ptx_file {ptx_file}: no such file")
        texts = ptx_texts(path.read_text(encoding="utf-8").splitlines(), ptx_file)
        return texts[:MAX_PTX_TEXTS], f"file {ptx_file}"
    # The completions labelers ranked best, with their prompts: on-distribution text people liked.
    # Plain text (the prompt's readable form), not the chat template: PPO-ptx is LM loss on documents.
    rows = session.execute(
        select(Prompt.text, Completion.text)
        .join(AnnotationItem, AnnotationItem.completion_id == Completion.id)
        .join(Task, Task.id == Completion.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(AnnotationItem.rank == 1)
        .distinct()
        .limit(MAX_PTX_TEXTS)
    ).all()
    return [f"{p}\n{c}" for p, c in rows], "chosen completions of the labeled data"


def resolve_reward(session: Any, params: dict[str, Any]) -> ModelVersion:
    if params.get("reward_version_id"):
        mv = session.get(ModelVersion, int(params["reward_version_id"]))
        if mv is None or mv.kind != ModelKind.reward:
            raise ValueError(f"reward_version_id {params['reward_version_id']} is not a reward model")
        return mv
    if params.get("reward_from_job"):
        mv = session.scalar(
            select(ModelVersion).where(
                ModelVersion.kind == ModelKind.reward, ModelVersion.job_id == int(params["reward_from_job"])
            )
        )
        if mv is None:
            raise ValueError(f"job {params['reward_from_job']} registered no reward model")
        return mv
    mv = models_service.active(session=session, kind=ModelKind.reward)
    if mv is None:
        raise ValueError("no active reward model: train one first (ranklab train reward) or activate one")
    return mv


def policy_files(version: ModelVersion) -> str:
    """A folder or hub id from_pretrained reads; the default or demo model's files made on first use."""
    from trainer.models import policy_files as files

    return files(version, get_settings())


class JobReporter:
    """PPO's reports into the job row: progress (may cancel), metrics, live samples table, log."""

    def __init__(self, ctx: Any, start: float = 0.02, from_demo: bool = False) -> None:
        self.ctx, self.start = ctx, start
        self.rows: list[dict[str, Any]] = []
        self.from_demo = from_demo  # the run page badges the samples of a demo-derived policy

    def progress(self, fraction: float, message: str) -> None:
        self.ctx.progress(self.start + (1 - self.start) * fraction * 0.99, message)

    def metric(self, step: int, **values: float) -> None:
        self.ctx.metric(step, **values)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.rows = (self.rows + rows)[-SAMPLES_KEPT:]
        with self.ctx.session() as s:  # shown on the run page while it runs
            job = s.get(Job, self.ctx.job_id)
            if job is not None:
                job.result = {**(job.result or {}), "samples": list(self.rows), "from_demo": self.from_demo}

    def log(self, line: str) -> None:
        self.ctx.log(line)


def run_job(ctx: Any) -> dict[str, Any]:
    params = dict(ctx.params)
    cfg = config_from_params(params)
    ctx.progress(0.0, "reading prompts")
    settings = get_settings()
    with ctx.session() as s:
        set_names = params.get("sets") or []
        prompts, set_ids = load_prompts(s, [set_names] if isinstance(set_names, str) else list(set_names))
        parent = (
            made_by(s, ModelKind.policy, int(params["policy_from_job"]))
            if params.get("policy_from_job")
            else policies.default_policy(session=s, settings=settings)
        )
        reward = resolve_reward(s, params)
        ptx_texts, ptx_source = load_ptx_texts(s, params.get("ptx_file")) if cfg.ptx_coef > 0 else ([], "off")
        # The demo policy's descendants still write demo-quality text: the badge follows the line.
        parent_demo = parent.is_demo or bool((parent.config or {}).get("parent_is_demo"))
        parent_id, parent_name = parent.id, parent.name
        reward_id, reward_path = reward.id, str(reward.path or reward.source)
    if not prompts:
        raise ValueError("the chosen prompt sets have no prompts")
    if cfg.ptx_coef > 0 and not ptx_texts:
        raise ValueError("ptx_coef > 0 but there is no pretraining text: pass ptx_file, or label some data")
    with ctx.session() as s:
        policy_path = policy_files(s.get(ModelVersion, parent_id))
    ctx.log(
        f"{len(prompts)} prompts from {len(set_ids)} set(s); policy {parent_id} ({parent_name}); "
        f"reward model {reward_id}; ptx: {ptx_source} ({len(ptx_texts)} texts)"
    )

    out_dir, work_dir = paths_for(ctx.job_id)
    reporter = JobReporter(ctx, from_demo=parent_demo)
    summary: Summary | None = None
    if not (out_dir / "summary.json").exists():
        if ctx.attempt > 1:
            # A reclaimed job: curves restart where the checkpoint does, without doubled points.
            resume_at = checkpoint_iteration(work_dir)
            with ctx.session() as s:
                s.execute(delete(JobMetric).where(JobMetric.job_id == ctx.job_id, JobMetric.step > resume_at))
        try:
            summary = train(
                cfg,
                policy_path=policy_path,
                reward_path=reward_path,
                prompts=prompts,
                ptx_texts=ptx_texts,
                work_dir=work_dir,
                output_dir=out_dir,
                reporter=reporter,
            )
        except Exception:
            # Cancelled or failed: no model, no checkpoints. (A killed worker leaves them to resume.)
            shutil.rmtree(work_dir, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            ctx.log("stopped: no model was saved and the checkpoints are deleted")
            raise
        (out_dir / "summary.json").write_text(json.dumps(_summary_dict(summary)))
    stored = json.loads((out_dir / "summary.json").read_text())

    metrics = {
        k: v
        for k, v in {
            "mean_reward": stored["last_mean_reward"],
            "first_mean_reward": stored["first_mean_reward"],
            "kl": stored["last_kl"],
            "beta": stored["last_beta"],
            "iterations": stored["iterations"],
            "no_eos_share": stored["last"].get("no_eos_share"),
            "response_length": stored["last"].get("response_length"),
        }.items()
        if v is not None
    }
    config = {
        "sets": set_ids,
        "reward_version_id": reward_id,
        "ptx": ptx_source,
        "parent_is_demo": parent_demo,
    }
    said = f"reward {stored['first_mean_reward']:.3f} → {stored['last_mean_reward']:.3f}, "
    said += f"KL {stored['last_kl']:.3f}"
    made = Trained("ppo", cfg, out_dir, metrics, config)
    mv_id = save_policy(ctx, made, parent_id=parent_id, summary=said)
    return {
        "model_version_id": mv_id,
        "path": str(out_dir),
        "parent_id": parent_id,
        "reward_version_id": reward_id,
        "metrics": metrics,
        "samples": reporter.rows,
        "from_demo": parent_demo,
        "resumed_from": stored["resumed_from"],
    }


def _summary_dict(summary: Summary) -> dict[str, Any]:
    def clean(v: float) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    return {
        "iterations": summary.iterations,
        "first_mean_reward": clean(summary.first_mean_reward),
        "last_mean_reward": clean(summary.last_mean_reward),
        "last_kl": clean(summary.last_kl),
        "last_beta": summary.last_beta,
        "resumed_from": summary.resumed_from,
        "last": {k: clean(v[-1]) for k, v in summary.history.items() if v},
    }
