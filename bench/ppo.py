"""PPO throughput: per-iteration time split into generation, scoring and update, and tokens/s.

Builds a randomly initialised GPT-2 policy and a same-size reward model (a word-level tokenizer,
no downloads), runs a few PPO iterations through trainer.ppo.train.train, and prints per
iteration and the median of the iterations after the first (which pays for warm-up).

The update phase's achieved FLOP/s is estimated as 6 · (policy + value parameters) · tokens
(forward + backward on every padded token of every minibatch, each PPO epoch), the usual
dense-transformer estimate; attention's extra term is left out, so it slightly undercounts.

    python bench/ppo.py                      # CPU: 4 layers, hidden 256
    python bench/ppo.py --preset gpu         # on a GPU: 12 layers, hidden 768, bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.chat import Conversation, from_text  # noqa: E402
from bench.common import timed_ppo, words  # noqa: E402

_PRESET_KEYS = words("layers hidden heads vocab batch mini_batch prompt_len new_tokens iterations")
PRESETS: dict[str, dict[str, int]] = {
    "cpu": dict(zip(_PRESET_KEYS, (4, 256, 4, 2000, 32, 8, 32, 32, 4), strict=True)),
    "gpu": dict(zip(_PRESET_KEYS, (12, 768, 12, 8000, 128, 32, 64, 128, 5), strict=True)),
}


def build(
    root: Path, *, layers: int, hidden: int, heads: int, vocab: int, prompt_len: int
) -> tuple[Path, Path, list[Conversation]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GPT2ForSequenceClassification,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    from trainer.models.demo import gpt2_config

    words = [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))  # noqa: S106  (a token, not a secret)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(words)],
        trainers.WordLevelTrainer(vocab_size=vocab, special_tokens=["<pad>", "<eos>", "<unk>"]),
    )
    specials = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **specials)
    config = gpt2_config(tokenizer, hidden=hidden, layers=layers, heads=heads, positions=1024)
    torch.manual_seed(0)
    policy, reward = root / "policy", root / "reward"
    GPT2LMHeadModel(config).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    config.num_labels = 1
    GPT2ForSequenceClassification(config).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    g = torch.Generator().manual_seed(1)
    # One user message each, rendered by the fallback template and cut to prompt_len from the left.
    prompts = [
        from_text(
            " ".join(words[i] for i in torch.randint(0, len(words), (prompt_len,), generator=g).tolist())
        )
        for _ in range(256)
    ]
    return policy, reward, prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu"
    )
    for name in PRESETS["cpu"]:
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    ap.add_argument("--ppo-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    size = {
        k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in PRESETS[args.preset].items()
    }
    if args.threads:
        torch.set_num_threads(args.threads)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policy, reward, prompts = build(
            root,
            layers=size["layers"],
            hidden=size["hidden"],
            heads=size["heads"],
            vocab=size["vocab"],
            prompt_len=size["prompt_len"],
        )
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(policy).parameters())
        rows, wall = timed_ppo(
            root,
            policy=policy,
            reward=reward,
            prompts=prompts,
            iterations=size["iterations"],
            batch_size=size["batch"],
            mini_batch_size=size["mini_batch"],
            ppo_epochs=args.ppo_epochs,
            max_new_tokens=size["new_tokens"],
            max_prompt_tokens=size["prompt_len"],
            missing_eos_penalty=0.0,
        )

    threads = torch.get_num_threads() if device == "cpu" else None
    print(
        f"device: {device}"
        + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else f", {threads} threads")
        + f"; precision: {'bf16' if device == 'cuda' else 'fp32'}"
    )
    print(
        f"policy: GPT-2 {size['layers']} layers, hidden {size['hidden']}, vocab {size['vocab']}, "
        f"{n_params / 1e6:.1f}M parameters (value network the same size)"
    )
    print(
        f"batch {size['batch']} episodes, minibatch {size['mini_batch']}, {args.ppo_epochs} PPO epoch(s), "
        f"prompt {size['prompt_len']} tokens, up to {size['new_tokens']} new tokens"
    )
    print(
        f"{'iter':>4} {'generate s':>10} {'score s':>8} {'update s':>9} {'total s':>8} {'resp len':>8} "
        f"{'tokens/s':>9} {'update TFLOP/s':>14}"
    )
    flops_rates = []
    for row in rows:
        total = row["time_generate"] + row["time_score"] + row["time_update"]
        # Minibatches run on sequences padded to prompt + longest response (the cap, for a random policy).
        padded = size["prompt_len"] + size["new_tokens"]
        update_flops = 6 * 2 * n_params * size["batch"] * padded * args.ppo_epochs
        rate = update_flops / row["time_update"] / 1e12
        flops_rates.append(rate)
        print(
            f"{row['iteration']:>4} {row['time_generate']:>10.3f} {row['time_score']:>8.3f} "
            f"{row['time_update']:>9.3f} {total:>8.3f} {row['response_length']:>8.1f} "
            f"{row['tokens_per_second']:>9.1f} {rate:>14.4f}"
        )
    steady = rows[1:] or rows
    med = {
        k: statistics.median(r[k] for r in steady)
        for k in ("time_generate", "time_score", "time_update", "tokens_per_second")
    }
    total = med["time_generate"] + med["time_score"] + med["time_update"]
    print(
        "median after the first iteration: "
        + ", ".join(
            f"{name} {med[key]:.3f} s ({med[key] / total:.0%})"
            for name, key in (
                ("generate", "time_generate"),
                ("score", "time_score"),
                ("update", "time_update"),
            )
        )
        + f"; {med['tokens_per_second']:.1f} response tokens/s; update "
        f"{statistics.median(flops_rates[1:] or flops_rates):.4f} TFLOP/s (estimated)"
    )
    print(json.dumps({"wall_seconds": round(wall, 2), **{k: round(v, 4) for k, v in med.items()}}))


if __name__ == "__main__":
    main()
