"""SFT side by side: ranklab's loop (trainer.sft.train) against TRL's SFTTrainer.

Same model (SmolLM2-135M-Instruct, the default policy, converted from its wheel once), same
conversations (the chosen sides of ../shared/data/hh-harmless-dev.jsonl.gz: the dialogue up to
the last assistant turn is the prompt, that turn the reply), same sequence length, batch,
steps, learning rate and schedule (cosine from lr to lr × min_lr_ratio, no warm-up), AdamW with
the same weight decay, gradient clipping at the same norm, float32, one epoch.

  ranklab: trainer.sft.train.train, as `ranklab train sft` runs it; the loss on the reply's
           tokens through the template's end of turn (`<|im_end|>`), built by trainer.render.
  TRL:     trl.SFTTrainer on {"prompt": messages, "completion": [assistant reply]} rows, its
           own tokenization (the model's chat template) and completion-only loss (its default
           for prompt-completion rows). TRL's assistant_only_loss needs a template with
           {% generation %} markers, which SmolLM2's ChatML template has not and TRL 1.16 has
           no training template for; for one final reply the completion is the same tokens,
           plus the "\\n" ChatML writes after `<|im_end|>`, which TRL also learns.

Only conversations that fit in --seq-len in both are used, so neither truncates (ranklab cuts
the prompt from the left, TRL the end of the reply). Beside the wall-clock figures, cpu_s is
the process's CPU time over the whole train call (model loading and tokenization included, for
both): on a busy machine it says more than wall time. The held-out loss is measured by one
function (trainer.sft.train.evaluate: mean loss per reply token) on the same held-out
conversations, encoded once by ranklab's renderer, for both trained models. Tokens/s is each
trainer's real (unpadded) tokens of the epoch over its training loop's wall time. Each way runs
in its own process (peak RSS is its own); repeats alternate the ways; medians are printed, with
os.getloadavg() beside every figure (the machine is shared). Floor: ranklab >= TRL's tokens/s
with a held-out loss within 2% of TRL's.

  python bench/sft.py                                   # 256 conversations, seq 256, batch 8
  python bench/sft.py --n 64 --steps 8 --seq-len 128    # a minute or two per way
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.chat import ChatError, split_hh_reply  # noqa: E402
from bench import trl_side  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl.gz"
FLOOR_SPEED = 1.0  # ranklab tokens/s ≥ TRL's
FLOOR_LOSS = 0.02  # held-out loss within 2% of TRL's


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def model_path(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from app.config import get_settings
    from trainer.models.smollm2 import ensure_default_model_with_bar

    return ensure_default_model_with_bar(Path(args.artifacts or get_settings().artifacts_dir))


def conversations(tokenizer: Any, args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """(training demos, held-out demos): HH chosen sides that fit in seq_len - 1 tokens rendered
    (TRL's rows are one "\\n" longer), shuffled with a fixed seed; held-out first."""
    from trainer import render
    from trainer.sft.data import Demo

    demos = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            try:
                conv, reply = split_hh_reply(json.loads(line)["chosen"])
            except ChatError:
                continue
            if not reply.strip():
                continue
            if len(render.reply_ids(tokenizer, conv, reply).input_ids) <= args.seq_len - 1:
                demos.append(Demo(messages=conv, reply=reply.strip(), split="train"))
    random.Random(0).shuffle(demos)
    n_train = args.steps * args.batch
    if len(demos) < args.held_out + n_train:
        sys.exit(f"only {len(demos)} conversations fit in {args.seq_len} tokens; ask for fewer")
    return demos[args.held_out : args.held_out + n_train], demos[: args.held_out]


def held_out_loss(model: Any, tokenizer: Any, held: list[Any], args: argparse.Namespace) -> float:
    """The one measure for both: mean loss per reply token on ranklab-encoded held-out demos."""
    import torch

    from trainer import render
    from trainer.sft.loss import encode_example
    from trainer.sft.train import evaluate

    examples = [encode_example(tokenizer, d.messages, d.reply, args.seq_len) for d in held]
    loss = evaluate(model.float(), examples, render.pad_id(tokenizer), torch.device("cpu"), args.batch)
    assert loss is not None
    return loss


def ranklab_config(path: Path, args: argparse.Namespace) -> Any:
    """The SFTConfig ranklab trains with; TRL gets its settings (trl_side.matching_args)."""
    from trainer.sft.config import SFTConfig

    return SFTConfig(
        base_model=str(path),
        lr=args.lr,
        warmup=0,
        epochs=1,
        batch_size=args.batch,
        grad_accum=1,
        max_length=args.seq_len,
        eval_every=1_000_000,
        checkpoint_every=0,
        seed=args.seed,
    )


def run_ranklab(path: Path, train: list[Any], held: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.sft.train import train as sft_train

    cfg = ranklab_config(path, args)
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        result = sft_train(cfg, train, validation=[], out_dir=Path(tmp) / "out", work_dir=Path(tmp) / "work")
        cpu = time.process_time() - cpu
        m = result.metrics
        tokens = round(m["tokens_per_second"] * m["seconds"])
        model = AutoModelForCausalLM.from_pretrained(result.path)
        tokenizer = AutoTokenizer.from_pretrained(result.path)
        loss = held_out_loss(model, tokenizer, held, args)
    return {
        "seconds": m["seconds"],
        "cpu_s": cpu,
        "tokens": tokens,
        "held_out_loss": loss,
        "steps": result.steps,
    }


def run_trl(path: Path, train: list[Any], held: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    rows = [
        {"prompt": list(d.messages), "completion": [{"role": "assistant", "content": d.reply}]} for d in train
    ]
    timer, clock = trl_side.clock()
    with tempfile.TemporaryDirectory() as tmp:
        config = trl_side.matching_args(
            TRLConfig,
            ranklab_config(path, args),  # ranklab's settings, schedule, decay and clipping
            output_dir=tmp,
            max_steps=args.steps,
            model_init_kwargs={"dtype": "float32"},
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        cpu = time.process_time()
        trainer = SFTTrainer(
            model=str(path),
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        trainer.train()
        cpu = time.process_time() - cpu
        loss = held_out_loss(trainer.model, tokenizer, held, args)
    return {
        "seconds": clock["ended"] - clock["began"],
        "cpu_s": cpu,
        "tokens": tokens,
        "held_out_loss": loss,
        "steps": args.steps,
    }


def child(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    path = Path(args.model)
    train, held = conversations(AutoTokenizer.from_pretrained(path), args)
    out = (run_ranklab if args.only == "ranklab" else run_trl)(path, train, held, args)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out["load"] = load()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="from_pretrained folder; default: SmolLM2-135M-Instruct (converted once)")
    ap.add_argument("--artifacts", help="artifacts folder for the converted default model")
    ap.add_argument("--n", type=int, default=256, help="training conversations (one epoch)")
    ap.add_argument("--steps", type=int, help="optimizer steps (default: n / batch); trains on steps × batch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--held-out", type=int, default=64, help="held-out conversations")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["ranklab", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or max(1, args.n // args.batch)
    if args.only:
        child(args)
        return
    if not HH.exists():
        sys.exit(f"{HH} is absent (shared/ sits beside the checkout): nothing to benchmark on")
    path = model_path(args)  # converted once, before anything is timed
    forwarded = [a for a in sys.argv[1:]] + ["--model", str(path), "--steps", str(args.steps)]
    results: dict[str, list[dict[str, Any]]] = {"ranklab": [], "trl": []}
    for rep in range(args.repeats):
        for way in ("ranklab", "trl") if rep % 2 == 0 else ("trl", "ranklab"):
            began = load()
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--only", way],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if done.returncode != 0:
                sys.exit(f"the {way} run failed:\n{done.stderr[-3000:]}")
            results[way].append(json.loads(done.stdout.strip().splitlines()[-1]) | {"load_before": began})
            print(f"repeat {rep + 1}, {way}: {json.dumps(results[way][-1])}", flush=True)

    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in results[way])

    def rate(way: str) -> float:
        return statistics.median(r["tokens"] / r["seconds"] for r in results[way])

    print(
        f"model: {path.name}, {args.steps} steps × {args.batch} conversations, seq-len {args.seq_len}, "
        f"lr {args.lr:g}, {args.held_out} held-out, {os.cpu_count()} CPUs, float32; median of "
        f"{args.repeats} repeat(s), each way in its own process; load average now {load()} (1/5/15 min)"
    )
    print(
        f"{'':<34} {'tokens/s':>9} {'seconds':>8} {'CPU s':>7} {'tokens':>7} {'held-out loss':>14} "
        f"{'peak RSS MB':>12}"
    )
    for label, way in (("ranklab (trainer.sft.train)", "ranklab"), ("TRL 1.16 SFTTrainer", "trl")):
        print(
            f"{label:<34} {rate(way):>9.1f} {med(way, 'seconds'):>8.1f} {med(way, 'cpu_s'):>7.1f} "
            f"{med(way, 'tokens'):>7.0f} "
            f"{med(way, 'held_out_loss'):>14.4f} {med(way, 'peak_mb'):>12.0f}"
        )
    speed = rate("ranklab") / rate("trl")
    gap = med("ranklab", "held_out_loss") / med("trl", "held_out_loss") - 1
    met = speed >= FLOOR_SPEED and gap <= FLOOR_LOSS
    print(
        f"ratio ranklab / TRL: {speed:.2f}x tokens/s, held-out loss {100 * gap:+.2f}% "
        f"(floor ≥ {FLOOR_SPEED:g}x at ≤ +{100 * FLOOR_LOSS:g}%: {'met' if met else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
