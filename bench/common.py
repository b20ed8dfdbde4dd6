"""What the benchmark scripts share: a timed PPO run that keeps every iteration's metrics, and
word lists written as one line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class Collect:
    """trainer.ppo.train's Reporter that keeps each iteration's metrics in `rows`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def progress(self, fraction: float, message: str) -> None: ...
    def metric(self, step: int, **values: float) -> None:
        self.rows.append({"iteration": step, **values})

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...
    def log(self, line: str) -> None: ...


def timed_ppo(
    root: Path, *, policy: Path, reward: Path, prompts: list[Any], **settings: Any
) -> tuple[list[dict[str, float]], float]:
    """trainer.ppo.train.train from `policy`, scored by `reward`, with PPOConfig(**settings) and
    no warm-up, no samples, no saves, in root/work and root/out: (each iteration's metrics,
    wall seconds of the train call)."""
    from trainer.ppo.train import PPOConfig, train

    cfg = PPOConfig(warmup_iterations=0, sample_every=0, save_every=0, **settings)
    rec = Collect()
    began = time.perf_counter()
    train(
        cfg,
        policy_path=policy,
        reward_path=reward,
        prompts=prompts,
        work_dir=root / "work",
        output_dir=root / "out",
        reporter=rec,
    )
    return rec.rows, time.perf_counter() - began


def words(text: str) -> list[str]:
    """The words of `text`: a vocabulary written as one line, not one word a line."""
    return text.split()
