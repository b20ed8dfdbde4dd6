"""What bench/sft.py and bench/reward.py share on TRL's side: its config set to ranklab's
settings, and a clock around its training loop (trainer construction and tokenization outside)."""

from __future__ import annotations

import time
from typing import Any


def matching_args(config_cls: Any, ours: Any, *, output_dir: str, **more: Any) -> Any:
    """A TRL config (SFTConfig, RewardConfig) with the settings of ranklab's run `ours` (a
    LoopConfig): its batch size, sequence length and seed, cosine from its lr to lr ×
    min_lr_ratio, no warm-up, the same weight decay and clipping; no checkpoints, no logging."""
    import torch

    return config_cls(
        output_dir=output_dir,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,  # ranklab trains in float32 on a CPU
        fp16=False,
        per_device_train_batch_size=ours.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=ours.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": ours.min_lr_ratio},
        warmup_steps=0,
        weight_decay=ours.weight_decay,
        max_grad_norm=ours.max_grad_norm,
        max_length=ours.max_length,
        seed=ours.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=10**6,
        disable_tqdm=True,
        **more,
    )


def clock() -> tuple[Any, dict[str, float]]:
    """(a TrainerCallback, the dict it fills with "began" and "ended": perf_counter at the start
    and the end of the training loop)."""
    from transformers import TrainerCallback

    times: dict[str, float] = {}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            times["began"] = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            times["ended"] = time.perf_counter()

    return Clock(), times
