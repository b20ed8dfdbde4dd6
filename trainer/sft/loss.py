"""SFT's loss: next-token cross-entropy on the assistant reply's tokens only.

The mask comes from the one renderer (trainer.render.reply_ids): the reply runs up to and
including the template's end-of-turn token, which is learned so the model learns to stop. Too
long an example is cut by render.fit: the prompt from the left, the reply kept. Pure functions
of token ids and tensors; the loop is train.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from app.chat import Conversation
from trainer import render

IGNORE = -100  # the label of a position that is not learned (transformers' and torch's convention)


@dataclass(frozen=True)
class Example:
    """One demonstration as ids: `labels[i]` is `input_ids[i]` on the reply's tokens, IGNORE elsewhere."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_learned(self) -> int:
        """Tokens the loss counts: the learned positions after the first (nothing predicts it)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode_example(tokenizer: Any, conversation: Conversation, reply: str, max_length: int) -> Example:
    rendered = render.fit(render.reply_ids(tokenizer, conversation, reply), max_length)
    ids = rendered.input_ids
    labels = [IGNORE] * rendered.prompt_len + ids[rendered.prompt_len :]
    return Example(input_ids=list(ids), labels=labels)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels, each (B, T); padding is never learned."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of the learned tokens' negative log-likelihoods, their count).

    logits (B, T, V) predict the token after each position; labels (B, T). Summed, not averaged,
    so a step over several micro-batches (and processes) divides once by all its tokens: every
    reply token weighs the same, however the batch was cut.
    """
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    picked = logits[:, :-1][keep].float()  # (N, V): only the learned positions, in float32
    return F.cross_entropy(picked, targets[keep], reduction="sum"), int(keep.sum())


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The model on a collated batch → summed_loss. Labels stay out of the model's call, so it
    does not compute (and average) a loss of its own."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return summed_loss(out.logits, batch["labels"])
