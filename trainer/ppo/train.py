"""The PPO loop (InstructGPT step 3): rollout, score, update, repeat; with checkpoints and resume.

Reads top to bottom: `train` sets up the models (setup.py), then per iteration the three phases
(phases.py), then reports and checkpoints (report.py):
  1. generate  — sample responses from the policy (temperature 1, no top-k/top-p)
  2. score     — old/ref log-probs, values, reward-model scores, shaped rewards, GAE
  3. update    — clipped PPO on policy and value, plus γ·∇ LM loss on pretraining text (PPO-ptx)
Runs single-process on CPU or one GPU, and unchanged under `accelerate launch` (each process
takes its share of the batch; only the main process writes files).

Prompts are conversations, seen only through trainer.render: rollouts start from the policy's
chat template (render.generation_batch) and stop at render.stop_token_ids; the reward model
reads (conversation, decoded response) through its own tokenizer's template (RewardModelScorer).
PPO-ptx text stays plain text: it is language-model loss on documents, not chat.

Free of the database: trainer/ppo/job.py adapts it to a job. `python -m trainer.ppo.launch`
runs it from files (for `accelerate launch` on several GPUs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.chat import Conversation
from trainer.ppo.config import CONFIG_FILE, PPOConfig  # noqa: F401  (re-exported)
from trainer.ppo.phases import lm_loss_on, rollout, score, tokenize_texts, update  # noqa: F401
from trainer.ppo.report import checkpoint_iteration, report, save_final  # noqa: F401  (re-exported)
from trainer.ppo.rollout import Rollout, read_normalization  # noqa: F401  (re-exported)
from trainer.ppo.setup import QuietReporter, Reporter, Scorer, prompt_room, setup  # noqa: F401  (re-exported)


@dataclass
class Summary:
    iterations: int
    first_mean_reward: float
    last_mean_reward: float
    last_kl: float
    last_beta: float
    resumed_from: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train(
    cfg: PPOConfig,
    *,
    policy_path: str | Path,
    reward_path: str | Path,
    prompts: Sequence[Conversation],
    work_dir: Path,
    output_dir: Path,
    ptx_texts: Sequence[str] = (),
    reporter: Reporter | None = None,
    scorer: Scorer | None = None,
) -> Summary:
    """Run PPO and write the new policy to `output_dir` (only once it is whole).

    Checkpoints go to `work_dir/checkpoint`; if one is there the run resumes from it. The
    value network starts from `reward_path`; scores come from it too unless `scorer` is given
    (tests pass a rule-based stand-in for a trained reward model).
    """
    cfg.validate()
    reporter = reporter or QuietReporter()
    if not prompts:
        raise ValueError("no prompts to train on: choose prompt sets that have prompts")
    if cfg.ptx_coef > 0 and not ptx_texts:
        raise ValueError(
            "ptx_coef > 0 needs pretraining texts (a JSON Lines file, or the chosen completions)"
        )
    ckpt = work_dir / "checkpoint"
    run = setup(cfg, Path(policy_path), Path(reward_path), ckpt, scorer, reporter)
    room = prompt_room(cfg, run)
    ptx = tokenize_texts(run.tokenizer, ptx_texts, cfg.ptx_max_tokens, "cpu") if cfg.ptx_coef > 0 else None

    for it in range(run.start_it, cfg.iterations):
        lr_scale = 0.1 + 0.9 * min(1.0, it / cfg.warmup_iterations) if cfg.warmup_iterations else 1.0
        for opt, base in ((run.opt_p, cfg.learning_rate), (run.opt_v, cfg.value_learning_rate)):
            for group in opt.param_groups:
                group["lr"] = base * lr_scale
        times = [time.perf_counter()]
        batch = rollout(cfg, run, prompts, room, it)  # 1. generate
        times.append(time.perf_counter())
        scored = score(cfg, run, batch)  # 2. score
        times.append(time.perf_counter())
        stats = update(cfg, run, batch, scored, it, ptx)  # 3. update
        times.append(time.perf_counter())
        report(cfg, run, batch, scored, stats, it, times, ckpt, reporter)  # metrics, β, checkpoint

    save_final(cfg, run, work_dir, output_dir)
    rewards_seen = run.history.get("mean_reward", [float("nan")])
    return Summary(
        iterations=cfg.iterations,
        first_mean_reward=rewards_seen[0],
        last_mean_reward=rewards_seen[-1],
        last_kl=run.history.get("kl", [float("nan")])[-1],
        last_beta=run.kl_ctl.beta,
        resumed_from=run.start_it,
        history=run.history,
    )
