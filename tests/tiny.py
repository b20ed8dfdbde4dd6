"""Tiny models built from configs, for tests that must run real transformers code on the CPU.

A word-level tokenizer trained on the given texts, a GPT-2-style policy, and a reward model
(the same backbone with one scalar head), each saved with save_pretrained so that code under
test loads them through the real from_pretrained path; and the reward and SFT loops' config
for a short run on such a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from trainer.config import LoopConfig
from trainer.models.demo import gpt2_config

SPECIALS = ["<pad>", "<eos>", "<unk>"]
L = TypeVar("L", bound=LoopConfig)


def tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 500, padding_side: str = "left"
) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        list(texts), trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side=padding_side,
    )


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    positions: int = 128,
    **extra: object,
) -> GPT2Config:
    return gpt2_config(tokenizer, hidden=hidden, layers=layers, heads=heads, positions=positions, **extra)


def tiny_policy(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **size: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(tokenizer, **size)).eval()


def tiny_reward_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, **size: int
) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(tiny_config(tokenizer, num_labels=1, **size)).eval()


def save_tiny_policy(path: Path, texts: Iterable[str], seed: int = 0, **size: int) -> Path:
    """A folder that AutoModelForCausalLM / AutoTokenizer.from_pretrained load."""
    tok = tiny_tokenizer(texts)
    tiny_policy(tok, seed=seed, **size).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_loop_config(cls: type[L], model: Path, **fields: Any) -> L:
    """A reward-model or SFT config (`cls`) for a short test run from the tiny model at `model`:
    learning rate 3e-3 (a tiny random model learns within a few dozen steps at it), and `fields`."""
    return cls(base_model=str(model), lr=3e-3, **fields)  # type: ignore[call-arg]
