"""RewardConfig: the reward model's training settings, saved next to every checkpoint.

Each field's default, range and help live once, in app/runs/params/reward.py (the form, the CLI
and the API are made from the same definition); `validate` checks a config against it. The
data filters (sets, min_labels, labelers, since, until) are the job's, not the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.runs.params import TRAIN_REWARD
from trainer.config import LoopConfig


@dataclass
class RewardConfig(LoopConfig):
    """See TRAIN_REWARD for what each field means; the defaults are its defaults (SpecConfig)."""

    SPEC = TRAIN_REWARD
    UNKNOWN = "reward config field"

    eval_batch_size: int
    normalize_samples: int
