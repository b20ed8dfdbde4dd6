"""Batched sampling against one generate call per completion, same model, same prompts.

Prints completions per second for each way and their ratio (medians over repeats):
  batched:   one generate per group of prompts, num_return_sequences=K, left padding (what the
             `sample` job does);
  unbatched: one generate call per completion.
Both stop at EOS, as real sampling does; the generated token counts are printed too.

  python bench/sampling.py                      # the demo policy, 16 prompts x K=4, CPU
  python bench/sampling.py --model path/to/model --device cuda
  python bench/sampling.py --device cuda --random-size 768x12   # a GPT-2-small-sized model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from app.config import get_settings  # noqa: E402
from app.runs.policies import demo_path  # noqa: E402
from trainer.models.demo import corpus_documents, ensure_demo_policy  # noqa: E402


def prompts(n: int) -> list[str]:
    # Instruction lines of the shipped corpus: the kind of prompt the demo model was trained on.
    firsts = [doc.split("\n", 1)[0] for doc in corpus_documents()]
    return [firsts[i % len(firsts)] for i in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_batched(
    model: Any, tok: Any, texts: list[str], k: int, max_new: int, device: str
) -> tuple[float, int]:
    enc = tok(texts, return_tensors="pt", padding=True).to(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            num_return_sequences=k,
            max_new_tokens=max_new,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    sync(device)
    new = out[:, enc["input_ids"].shape[1] :]  # (B*K, T_new)
    return time.perf_counter() - start, int((new != tok.pad_token_id).sum())


def run_unbatched(
    model: Any, tok: Any, texts: list[str], k: int, max_new: int, device: str
) -> tuple[float, int]:
    tokens = 0
    sync(device)
    start = time.perf_counter()
    for text in texts:
        enc = tok([text], return_tensors="pt").to(device)
        for _ in range(k):
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    max_new_tokens=max_new,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            tokens += out.shape[1] - enc["input_ids"].shape[1]
    sync(device)
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="from_pretrained folder; default: the demo policy (built if absent)")
    ap.add_argument(
        "--random-size",
        help="HIDDENxLAYERS: a randomly initialised GPT-2 of that size "
        "with the demo tokenizer (for a bigger model offline)",
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    path = Path(args.model) if args.model else ensure_demo_policy(demo_path(get_settings()))
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if args.random_size:
        hidden, layers = (int(x) for x in args.random_size.lower().split("x"))
        torch.manual_seed(0)
        model: Any = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_embd=hidden,
                n_layer=layers,
                n_head=max(1, hidden // 64),
                n_positions=1024,
                bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )
        name = f"random GPT-2 {hidden}x{layers}"
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
        name = str(path)
    model.to(args.device).eval()
    params = sum(p.numel() for p in model.parameters())
    texts = prompts(args.prompts)
    n = args.prompts * args.k
    print(
        f"model: {name} ({params / 1e6:.2f} M parameters), device: {args.device}, "
        f"torch threads: {torch.get_num_threads()}"
    )
    print(
        f"{args.prompts} prompts x K={args.k} = {n} completions, max_new_tokens={args.max_new_tokens}, "
        f"median of {args.repeats} repeats"
    )
    run_batched(model, tok, texts[:2], args.k, 4, args.device)  # warm-up
    rates: dict[str, list[float]] = {"batched": [], "unbatched": []}
    tokens: dict[str, list[int]] = {"batched": [], "unbatched": []}
    for rep in range(args.repeats):
        torch.manual_seed(rep)
        for label, fn in (("batched", run_batched), ("unbatched", run_unbatched)):
            seconds, toks = fn(model, tok, texts, args.k, args.max_new_tokens, args.device)
            rates[label].append(n / seconds)
            tokens[label].append(toks)
    b, u = statistics.median(rates["batched"]), statistics.median(rates["unbatched"])
    print(
        f"batched (one generate per {args.prompts} prompts, num_return_sequences={args.k}): "
        f"{b:.1f} completions/s  (median generated tokens {statistics.median(tokens['batched']):.0f})"
    )
    print(
        f"unbatched (one generate per completion): {u:.1f} completions/s  "
        f"(median generated tokens {statistics.median(tokens['unbatched']):.0f})"
    )
    print(f"ratio batched/unbatched: {b / u:.1f}x")


if __name__ == "__main__":
    main()
