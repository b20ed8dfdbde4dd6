"""The `train_ppo` job's parameters (trainer/ppo/config.py takes its defaults from here), and the
round's, which are a few of PPO's plus which sets to resample.

Defaults: InstructGPT App. C.4 (β 0.02, clip 0.2, GAE γ 1, λ 0.95, one inner epoch, 10 warm-up
iterations) at a size one machine runs in minutes (docs/ppo.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from app.runs.params.spec import MAX_ID, Check, JobSpec, Param, sets_param


def _mini_batch_fits(v: Mapping[str, Any]) -> str | None:
    if v["mini_batch_size"] > v["batch_size"]:
        return f"at most batch_size ({v['batch_size']})"
    return None


# The value network's rate has the same range (replace() below).
_LEARNING_RATE = Param(
    "learning_rate",
    float,
    9.65e-6,
    "Policy Adam learning rate, constant after warm-up (paper, 1.3B policy: 9.65e-6).",
    "Learning rate",
    low=1e-10,
    high=1.0,
    cli=("--lr",),
)


TRAIN_PPO = JobSpec(
    kind="train_ppo",
    title="Train policy (PPO)",
    fields=(
        sets_param("Draw prompts from these prompt sets; none: every set not archived."),
        Param(
            "reward_version_id",
            int,
            None,
            "Reward model version to score with; empty: the active one.",
            "Reward model version",
            role="data",
            optional=True,
            low=1,
            high=MAX_ID,
            cli=("--reward-model",),
            metavar="ID",
            advanced=True,
        ),
        Param(
            "ptx_file",
            str,
            None,
            'JSON Lines of {"text": ...} for PPO-ptx; none: the chosen completions of the labeled data.',
            "Pretraining texts",
            role="data",
            optional=True,
            api=False,
        ),
        Param(
            "iterations",
            int,
            100,
            "Rollout + update rounds (the paper: 256k episodes, 500 × 512).",
            "Iterations",
            low=1,
            high=1_000_000,
        ),
        Param(
            "batch_size",
            int,
            64,
            "Episodes per rollout over all processes (paper: 512).",
            "Batch (episodes per iteration)",
            low=1,
            high=65_536,
        ),
        Param(
            "mini_batch_size",
            int,
            16,
            "Episodes per optimizer step (paper: 64).",
            "Minibatch",
            low=1,
            high=65_536,
        ),
        Param(
            "ppo_epochs",
            int,
            1,
            "Passes over each rollout (paper: 1).",
            "PPO epochs per batch",
            low=1,
            high=100,
        ),
        _LEARNING_RATE,
        replace(
            _LEARNING_RATE,
            name="value_learning_rate",
            help="The value network's Adam learning rate.",
            label="Value learning rate",
            cli=("--value-lr",),
            advanced=True,
        ),
        Param(
            "warmup_iterations",
            int,
            10,
            "Linear warm-up from a tenth of the rate over this many iterations (paper: 10).",
            "Warm-up iterations",
            low=0,
            high=1_000_000,
            advanced=True,
        ),
        Param(
            "max_new_tokens",
            int,
            64,
            "Response length cap; a response cut here never ended.",
            "Max response tokens",
            low=1,
            high=8192,
        ),
        Param(
            "max_prompt_tokens",
            int,
            512,
            "Longer prompts keep their last tokens.",
            "Max prompt tokens",
            low=1,
            high=65_536,
            advanced=True,
        ),
        Param(
            "temperature",
            float,
            1.0,
            "Rollout sampling temperature; log-probs use logits / temperature too (paper: 1).",
            "Temperature",
            low=1e-3,
            high=100.0,
            advanced=True,
        ),
        Param(
            "beta",
            float,
            0.02,
            "KL coefficient β of the per-token penalty −β·(log π − log π_ref) (paper: 0.02).",
            "KL coefficient β",
            low=0.0,
            high=100.0,
        ),
        Param(
            "kl_target",
            float,
            None,
            "Adapt β so the KL approaches this (Ziegler et al.); empty: a fixed β.",
            "Adapt β towards this KL",
            optional=True,
            low=1e-6,
            high=1000.0,
        ),
        Param(
            "kl_horizon",
            float,
            10_000,
            "Episodes over which the adaptive KL controller closes the gap.",
            "KL horizon (episodes)",
            low=1.0,
            high=1e9,
            advanced=True,
        ),
        Param("gamma", float, 1.0, "GAE discount (paper: 1).", "GAE γ", low=0.0, high=1.0, advanced=True),
        Param("lam", float, 0.95, "GAE λ (paper: 0.95).", "GAE λ", low=0.0, high=1.0, advanced=True),
        Param(
            "clip_ratio",
            float,
            0.2,
            "Policy ratio clip (paper: 0.2).",
            "Policy clip",
            low=1e-3,
            high=10.0,
            advanced=True,
        ),
        Param(
            "clip_value",
            float,
            0.2,
            "Value clip around the rollout's values.",
            "Value clip",
            low=1e-3,
            high=1e6,
            advanced=True,
        ),
        Param(
            "missing_eos_penalty",
            float,
            1.0,
            "Subtracted from the score of a response that never ends.",
            "Penalty without EOS",
            low=0.0,
            high=1e6,
            advanced=True,
        ),
        Param(
            "ptx_coef",
            float,
            0.0,
            "PPO-ptx γ: weight of the pretraining LM loss; 0: off (paper: 27.8).",
            "Pretraining mix γ",
            low=0.0,
            high=1000.0,
        ),
        Param(
            "ptx_batch_size",
            int,
            8,
            "Pretraining texts per optimizer step.",
            "Pretraining batch",
            low=1,
            high=65_536,
            advanced=True,
        ),
        Param(
            "ptx_max_tokens",
            int,
            256,
            "Pretraining texts are cut to this many tokens.",
            "Pretraining tokens",
            low=1,
            high=65_536,
            advanced=True,
        ),
        Param(
            "max_grad_norm",
            float,
            1.0,
            "Gradient clipping, policy and value alike.",
            "Gradient clip norm",
            low=1e-6,
            high=1e6,
            advanced=True,
        ),
        Param(
            "seed",
            int,
            0,
            "One seed for prompt order, sampling and minibatch order.",
            "Seed",
            low=0,
            high=2**31 - 1,
        ),
        Param(
            "sample_every",
            int,
            10,
            "Publish a table of sample responses every N iterations (0: never).",
            "Samples every (iterations)",
            low=0,
            high=1_000_000,
            advanced=True,
        ),
        Param(
            "samples_shown",
            int,
            4,
            "Rows of that table.",
            "Sample rows",
            low=0,
            high=1000,
            advanced=True,
        ),
        Param(
            "save_every",
            int,
            10,
            "Checkpoint every N iterations (0: never; a resumed run then starts over).",
            "Checkpoint every (iterations)",
            low=0,
            high=1_000_000,
            advanced=True,
        ),
        Param(
            "mixed_precision",
            str,
            "auto",
            "Autocast precision: auto is bf16 on a GPU that has it, else none.",
            "Mixed precision",
            choices=("auto", "bf16", "fp16", "no"),
            advanced=True,
        ),
    ),
    checks=(Check("mini_batch_size", _mini_batch_fits),),
)

# A round's PPO size is settable: a CPU-only user makes a round of a real model short with them.
ROUND_PPO_KNOBS = ("iterations", "batch_size", "mini_batch_size", "max_new_tokens", "beta", "ptx_coef")

ROUND = JobSpec(
    kind="round",
    title="Start next round",
    fields=(
        sets_param("Resample these prompt sets with the new policy; none: every active set."),
        Param(
            "mix",
            bool,
            False,
            "Mix old- and new-policy completions in every new task.",
            "Mix old- and new-policy completions in every task",
            role="data",
        ),
        Param(
            "sft",
            bool,
            False,
            "When there are demonstrations newer than the last SFT policy, fine-tune on them first: "
            "the SFT policy is PPO's start and KL reference.",
            "Start with SFT on new demonstrations",
            role="data",
        ),
        *(TRAIN_PPO[name] for name in ROUND_PPO_KNOBS),
    ),
    checks=(Check("mini_batch_size", _mini_batch_fits),),
)
