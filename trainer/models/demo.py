"""The demo policy: a small GPT-2-style model built offline from the text the project ships.

Used when RANKLAB_POLICY_MODEL is unset, so that `make run` shows real sampled text with no
download. A byte-level BPE tokenizer is trained on trainer/models/demo_corpus.txt (short friendly
instructions and answers written for this project), a model is made from a config and trained
on the same text for well under a minute on a CPU, so that its outputs are words rather than
noise. The folder is written with save_pretrained and read back with from_pretrained, the same
path a real model takes. It is built once; later calls find the finished folder and return.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from app.runs.policies import DEMO_MARKER

CORPUS = Path(__file__).resolve().parent / "demo_corpus.txt"
MARKER = DEMO_MARKER  # written last: its presence means the folder is complete
PAD, EOS = "<|pad|>", "<|endoftext|>"


@dataclass(frozen=True)
class DemoSize:
    hidden: int = 96  # embedding width
    layers: int = 3
    heads: int = 4
    vocab: int = 3000  # BPE vocabulary: large enough that most words of the corpus are one token
    positions: int = 512  # longest prompt + completion the model can see
    seq_len: int = 64  # training window, in tokens
    batch: int = 8  # windows per training step
    steps: int = 800  # upper bound on training steps
    seconds: float = 45.0  # wall-clock cap on training, whichever comes first
    lr: float = 3e-3


# Tests build this one: small enough to train in a few seconds, still real transformers code.
TINY = DemoSize(
    hidden=32,
    layers=2,
    heads=2,
    vocab=400,
    positions=256,  # room for the demo set's multi-turn prompts after the plain template
    seq_len=48,
    batch=8,
    steps=60,
    seconds=8.0,
    lr=5e-3,
)


def corpus_documents(path: Path = CORPUS) -> list[str]:
    """One document per blank-line-separated block: the instruction, a newline, the answer."""
    blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n")]
    return [b for b in blocks if b]


def build_tokenizer(docs: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        docs,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=[PAD, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    # Left padding: generation appends to the right end of every row of a batch.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=EOS, padding_side="left"
    )


def vocabulary(tokenizer: PreTrainedTokenizerFast, *, bos_token_id: int | None) -> dict[str, Any]:
    """A model config's vocabulary settings: the tokenizer's size, eos and pad ids, and this bos."""
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def gpt2_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int,
    layers: int,
    heads: int,
    positions: int,
    **extra: Any,
) -> GPT2Config:
    """A small GPT-2 for this tokenizer: no dropout (deterministic runs), its eos also the bos.
    The demo policy's, and the tests' and benchmarks' tiny models'."""
    return GPT2Config(
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **vocabulary(tokenizer, bos_token_id=tokenizer.eos_token_id),
        **extra,
    )


def build_demo_policy(
    path: Path, size: DemoSize = DemoSize(), *, seed: int = 0, say: Callable[[str], None] | None = None
) -> Path:
    """Build, train briefly and save the demo policy into `path` (replacing what is there)."""
    say = say or (lambda _msg: None)
    torch.manual_seed(seed)
    docs = corpus_documents()
    tokenizer = build_tokenizer(docs, size.vocab)
    config = gpt2_config(
        tokenizer, hidden=size.hidden, layers=size.layers, heads=size.heads, positions=size.positions
    )
    model = GPT2LMHeadModel(config)
    stream = _token_stream(docs, tokenizer)
    say(f"training the demo policy on {len(stream)} tokens (at most {size.seconds:.0f} s)")
    steps, loss = _train(model, stream, size)
    say(f"trained {steps} steps, final loss {loss:.2f}")
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = True
    # Write beside the target, then move into place: a half-written folder is never seen.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "size": asdict(size),
                "seed": seed,
                "train_steps": steps,
                "final_loss": round(loss, 4),
                "corpus": CORPUS.name,
                "note": "demo model: not a real assistant",
            },
            indent=2,
        )
    )
    if path.exists():
        shutil.rmtree(path)
    try:
        os.replace(tmp, path)
    except OSError:
        # Another process finished first; theirs is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_built(path: Path) -> bool:
    return (path / MARKER).is_file()


def ensure_demo_policy(
    path: Path, size: DemoSize = DemoSize(), *, say: Callable[[str], None] | None = None
) -> Path:
    if not is_built(path):
        build_demo_policy(path, size, say=say)
    return path


def _token_stream(docs: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def _train(model: GPT2LMHeadModel, stream: torch.Tensor, size: DemoSize) -> tuple[int, float]:
    # One thread: this model is too small to gain from more, and on a busy machine extra
    # threads only wait for each other (measured: 5x slower per step under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_loop(model, stream, size)
    finally:
        torch.set_num_threads(threads)


def _train_loop(model: GPT2LMHeadModel, stream: torch.Tensor, size: DemoSize) -> tuple[int, float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=size.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    start, step, loss_value = time.monotonic(), 0, float("nan")
    span = len(stream) - size.seq_len - 1
    while step < size.steps and time.monotonic() - start < size.seconds:
        # Cosine decay to 10% over the planned steps.
        for group in opt.param_groups:
            group["lr"] = size.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / size.steps)))
        offsets = torch.randint(0, span, (size.batch,), generator=gen)
        batch = torch.stack([stream[o : o + size.seq_len] for o in offsets.tolist()])  # (B, T)
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = out.loss.item()
        step += 1
    return step, loss_value
