"""SFTConfig: supervised fine-tuning's settings, saved next to every checkpoint and the new policy.

Each field's default, range and help live once, in app/runs/params/sft.py (the form, the CLI and
the API are made from the same definition); `validate` checks a config against it. The data
filters (sets) are the job's, not the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.runs.params import TRAIN_SFT
from trainer.config import SpecConfig

CONFIG_FILE = "sft_config.json"

_D = TRAIN_SFT.defaults

# Config fields the definition does not offer to users: none today.
INTERNAL: frozenset[str] = frozenset()


@dataclass
class SFTConfig(SpecConfig):
    """See TRAIN_SFT for what each field means; the defaults are its defaults."""

    SPEC = TRAIN_SFT
    INTERNAL = INTERNAL
    UNKNOWN = "SFT setting"

    base_model: str = _D["base_model"]
    lr: float = _D["lr"]
    min_lr_ratio: float = _D["min_lr_ratio"]
    warmup: int = _D["warmup"]
    epochs: int = _D["epochs"]
    batch_size: int = _D["batch_size"]
    grad_accum: int = _D["grad_accum"]
    max_length: int = _D["max_length"]
    dropout: float = _D["dropout"]
    weight_decay: float = _D["weight_decay"]
    max_grad_norm: float = _D["max_grad_norm"]
    eval_every: int = _D["eval_every"]
    checkpoint_every: int = _D["checkpoint_every"]
    bf16: bool = _D["bf16"]
    seed: int = _D["seed"]
