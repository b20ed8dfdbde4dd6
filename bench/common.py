"""What the benchmark scripts share: a PPO reporter that keeps every iteration's metrics, and
word lists written as one line."""

from __future__ import annotations

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


def words(text: str) -> list[str]:
    """The words of `text`: a vocabulary written as one line, not one word a line."""
    return text.split()
