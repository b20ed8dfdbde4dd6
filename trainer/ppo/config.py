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

_D = TRAIN_PPO.defaults

# Config fields the definition does not offer to users: none today.
INTERNAL: frozenset[str] = frozenset()


@dataclass
class PPOConfig(SpecConfig):
    """See TRAIN_PPO for what each field means; the defaults are its defaults."""

    SPEC = TRAIN_PPO
    INTERNAL = INTERNAL
    UNKNOWN = "PPO setting"

    iterations: int = _D["iterations"]
    batch_size: int = _D["batch_size"]
    mini_batch_size: int = _D["mini_batch_size"]
    ppo_epochs: int = _D["ppo_epochs"]
    learning_rate: float = _D["learning_rate"]
    value_learning_rate: float = _D["value_learning_rate"]
    warmup_iterations: int = _D["warmup_iterations"]
    max_new_tokens: int = _D["max_new_tokens"]
    max_prompt_tokens: int = _D["max_prompt_tokens"]
    temperature: float = _D["temperature"]
    beta: float = _D["beta"]
    kl_target: float | None = _D["kl_target"]
    kl_horizon: float = _D["kl_horizon"]
    gamma: float = _D["gamma"]
    lam: float = _D["lam"]
    clip_ratio: float = _D["clip_ratio"]
    clip_value: float = _D["clip_value"]
    missing_eos_penalty: float = _D["missing_eos_penalty"]
    ptx_coef: float = _D["ptx_coef"]
    ptx_batch_size: int = _D["ptx_batch_size"]
    ptx_max_tokens: int = _D["ptx_max_tokens"]
    max_grad_norm: float = _D["max_grad_norm"]
    seed: int = _D["seed"]
    sample_every: int = _D["sample_every"]
    samples_shown: int = _D["samples_shown"]
    save_every: int = _D["save_every"]
    mixed_precision: str = _D["mixed_precision"]
