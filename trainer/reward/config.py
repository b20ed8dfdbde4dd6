"""RewardConfig: the reward model's training settings, saved next to every checkpoint.

Each field's default, range and help live once, in app/runs/params/reward.py (the form, the CLI
and the API are made from the same definition); `validate` checks a config against it. The
data filters (sets, min_labels, labelers, since, until) are the job's, not the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.runs.params import TRAIN_REWARD
from trainer.config import SpecConfig

_D = TRAIN_REWARD.defaults

# Config fields the definition does not offer to users: none today.
INTERNAL: frozenset[str] = frozenset()


@dataclass
class RewardConfig(SpecConfig):
    """See TRAIN_REWARD for what each field means; the defaults are its defaults."""

    SPEC = TRAIN_REWARD
    INTERNAL = INTERNAL
    UNKNOWN = "reward config field"

    base_model: str = _D["base_model"]
    lr: float = _D["lr"]
    min_lr_ratio: float = _D["min_lr_ratio"]
    epochs: int = _D["epochs"]
    batch_size: int = _D["batch_size"]
    grad_accum: int = _D["grad_accum"]
    max_length: int = _D["max_length"]
    weight_decay: float = _D["weight_decay"]
    max_grad_norm: float = _D["max_grad_norm"]
    eval_every: int = _D["eval_every"]
    checkpoint_every: int = _D["checkpoint_every"]
    eval_batch_size: int = _D["eval_batch_size"]
    normalize_samples: int = _D["normalize_samples"]
    bf16: bool = _D["bf16"]
    seed: int = _D["seed"]
