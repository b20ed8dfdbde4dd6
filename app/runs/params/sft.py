"""The `train_sft` job's parameters (trainer/sft/config.py takes its defaults from here).

Defaults: InstructGPT's SFT recipe (App. C.1: cosine decay to 10% of the rate, no warm-up) at a
size one CPU machine trains in minutes; each help gives the paper's value where it differs
(16 epochs, residual dropout 0.2, batch 32, lr 9.65e-6 for the 1.3B and 6B models).
"""

from __future__ import annotations

from dataclasses import replace

from app.runs.params.reward import TRAIN_REWARD as _REWARD
from app.runs.params.spec import JobSpec, Param, sets_param

# The optimizer knobs SFT shares with the reward model (_REWARD[...]) are defined once, there.

TRAIN_SFT = JobSpec(
    kind="train_sft",
    title="Train policy on demonstrations (SFT)",
    fields=(
        sets_param("Train on these prompt sets' demonstrations; none: every set."),
        _REWARD["split_seed"],
        _REWARD["split_fractions"],
        replace(
            _REWARD["base_model"],
            help="Policy to fine-tune: a policy version id, a hub id or a folder; empty: the active policy.",
            label="Base policy (version id, hub id or folder)",
            cli=("--base",),
        ),
        replace(
            _REWARD["lr"],
            default=2e-5,
            help="Peak AdamW learning rate, decayed by a cosine (paper: 9.65e-6 for 1.3B and 6B).",
        ),
        _REWARD["min_lr_ratio"],
        Param(
            "warmup",
            int,
            0,
            "Optimizer steps of linear warm-up before the cosine decay (paper: none).",
            "Warm-up steps",
            low=0,
            high=1_000_000,
            advanced=True,
        ),
        replace(
            _REWARD["epochs"],
            default=2,
            help="Passes over the training demonstrations (paper: 16, chosen by reward-model score).",
        ),
        replace(
            _REWARD["batch_size"],
            help="Demonstrations per micro-batch per process (paper: 32).",
            label="Batch size (demonstrations)",
        ),
        replace(
            _REWARD["grad_accum"],
            help="Micro-batches per optimizer step: demonstrations per step = batch size × this × processes.",
        ),
        replace(
            _REWARD["max_length"],
            help="Tokens of conversation + reply; the prompt is cut from the left, the reply kept.",
        ),
        Param(
            "dropout",
            float,
            0.0,
            "Residual dropout while training, where the architecture has it (paper: 0.2 over 16 epochs).",
            "Residual dropout",
            low=0.0,
            high=0.9,
            advanced=True,
        ),
        *(_REWARD[name] for name in ("weight_decay", "max_grad_norm")),
        Param(
            "eval_every",
            int,
            50,
            "Optimizer steps between validations (there is always one before the first and after the last).",
            "Validate every (steps)",
            low=1,
            high=1_000_000,
            advanced=True,
        ),
        *(_REWARD[name] for name in ("checkpoint_every", "bf16")),
        Param(
            "seed",
            int,
            0,
            "Seeds the data order and the model's dropout.",
            "Seed",
            low=0,
            high=2**31 - 1,
            advanced=True,
        ),
    ),
)
