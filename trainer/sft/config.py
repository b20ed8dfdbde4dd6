"""SFTConfig: supervised fine-tuning's settings, saved next to every checkpoint and the new policy.

Each field's default, range and help live once, in app/runs/params/sft.py (the form, the CLI and
the API are made from the same definition); `validate` checks a config against it. The data
filters (sets) are the job's, not the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.runs.params import TRAIN_SFT
from trainer.config import LoopConfig

CONFIG_FILE = "sft_config.json"


@dataclass
class SFTConfig(LoopConfig):
    """See TRAIN_SFT for what each field means; the defaults are its defaults (SpecConfig)."""

    SPEC = TRAIN_SFT
    UNKNOWN = "SFT setting"

    warmup: int
    dropout: float
