"""`ranklab reward eval`: a reward model's pairwise accuracy on a preference file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer.reward.files import read_preference_groups
from trainer.reward.model import Group, load_reward_model, pair_correct, plan_pairs, score_replies


def evaluate_file(
    model_path: str, file: Path, *, max_length: int, batch_size: int, limit: int | None = None
) -> tuple[float, int, int]:
    """(comparisons ordered right, comparisons, invalid rows skipped) over the file's untied pairs.
    Raises ValueError when the file holds no valid comparison."""
    groups, skipped = read_preference_groups(file)
    if limit is not None:
        groups = groups[:limit]
    if not groups:
        raise ValueError(f"{file} has no valid comparisons")
    model, tokenizer = load_reward_model(model_path)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    correct, pairs = evaluate_groups(model, tokenizer, groups, max_length=max_length, batch_size=batch_size)
    return correct, pairs, skipped


def group_scores(model: torch.nn.Module, tokenizer: Any, groups: Sequence[Group], **kw: Any) -> torch.Tensor:
    """Every group's every (conversation, completion) through score_replies (rendered as in
    training), in order; `kw` goes to score_replies (max_length, batch_size, normalized)."""
    convs = [g.messages for g in groups for _ in g.completions]
    return torch.tensor(
        score_replies(model, tokenizer, convs, [c for g in groups for c in g.completions], **kw)
    )


def evaluate_groups(
    model: torch.nn.Module, tokenizer: Any, groups: Sequence[Group], *, max_length: int, batch_size: int
) -> tuple[float, int]:
    """(comparisons ordered right, comparisons): each (conversation, completion) scored raw
    through score_replies, i.e. rendered as in training."""
    correct, pairs = 0.0, 0
    chunk = max(1, batch_size // 2)
    for start in range(0, len(groups), chunk):
        part = groups[start : start + chunk]
        scores = group_scores(
            model, tokenizer, part, max_length=max_length, batch_size=batch_size, normalized=False
        )
        right, n = pair_correct(scores, plan_pairs(part))
        correct += right
        pairs += n
    return correct, pairs
