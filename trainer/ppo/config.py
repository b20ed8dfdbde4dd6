"""PPOConfig: PPO's settings, saved next to every checkpoint and beside the new policy.

Each field's default, range and help live once, in app/runs/params/ppo.py (the form, the CLI and
the API are made from the same definition); `validate` checks a config against it, cross-field
rules included (a minibatch no larger than the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.runs.params import TRAIN_PPO
from trainer.config import SpecConfig

CONFIG_FILE = "ppo_config.json"


@dataclass
class PPOConfig(SpecConfig):
    """See TRAIN_PPO for what each field means; the defaults are its defaults (SpecConfig)."""

    SPEC = TRAIN_PPO
    UNKNOWN = "PPO setting"

    iterations: int
    batch_size: int
    mini_batch_size: int
    ppo_epochs: int
    learning_rate: float
    value_learning_rate: float
    warmup_iterations: int
    max_new_tokens: int
    max_prompt_tokens: int
    temperature: float
    beta: float
    kl_target: float | None
    kl_horizon: float
    gamma: float
    lam: float
    clip_ratio: float
    clip_value: float
    missing_eos_penalty: float
    ptx_coef: float
    ptx_batch_size: int
    ptx_max_tokens: int
    max_grad_norm: float
    seed: int
    sample_every: int
    samples_shown: int
    save_every: int
    mixed_precision: str
