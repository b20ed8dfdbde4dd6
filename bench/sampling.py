"""ranklab's sampling against the loop a user would write, same model, same conversations.

  ranklab:   trainer.sampling.backends.LocalBackend, called the way the `sample` job calls it:
             one `generate(conversations, n=K)` per batch of SampleConfig.batch_prompts (16)
             conversations; the renderer applies the chat template, pads left, stops at the
             end of the turn;
  user loop: for each conversation, `tokenizer.apply_chat_template(..., add_generation_prompt=True)`
             and one `model.generate(num_return_sequences=K)`: the loop in the transformers docs.

Both sample with the same max_new_tokens, temperature, top_p, top_k and stop tokens (EOS and the
template's end of turn, `<|im_end|>` for SmolLM2). Each way runs in its own process (so its peak
memory is its own: peak RSS on CPU, peak allocated on CUDA); repeats alternate the two ways and
the medians are printed: completions/s and generated tokens/s side by side, and the ratio. The
floor is ranklab >= 2x the user loop's completions/s.

  python bench/sampling.py                       # SmolLM2-135M-Instruct (converted if absent), 32 x K=4
  python bench/sampling.py --tiny                # the tiny demo GPT-2 (seconds)
  python bench/sampling.py --model path/to/model --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.chat import Conversation  # noqa: E402
from app.prompts.commands import DEMO_FILE  # noqa: E402
from app.prompts.parsing import parse_prompt_file  # noqa: E402

FLOOR = 2.0


def conversations(n: int) -> list[Conversation]:
    """`n` conversations cycled from the demo set (single- and multi-turn, some with a system message)."""
    parsed = parse_prompt_file(
        filename=DEMO_FILE.name,
        data=DEMO_FILE.read_bytes(),
        fmt=None,
        max_bytes=10**7,
        max_tokens=10**6,
        count_tokens=lambda conv: 0,
        limit_name="none",
    )
    convs = [p.messages for p in parsed.prompts]
    return [convs[i % len(convs)] for i in range(n)]


def model_path(args: argparse.Namespace) -> Path:
    from app.config import get_settings
    from app.runs.policies import demo_path

    if args.model:
        return Path(args.model)
    if args.tiny:
        from trainer.models.demo import ensure_demo_policy

        return ensure_demo_policy(demo_path(get_settings()))
    from trainer.models.smollm2 import ensure_default_model_with_bar

    return ensure_default_model_with_bar(Path(args.artifacts or get_settings().artifacts_dir))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ranklab(path: Path, convs: list[Conversation], args: argparse.Namespace) -> tuple[float, int, int]:
    """(seconds, completions, generated tokens) through LocalBackend, batches as the sample job makes."""
    from trainer.render import prompt_text
    from trainer.sampling.backends import LocalBackend, SamplingParams
    from trainer.sampling.job import SampleConfig

    backend = LocalBackend(str(path), device=args.device)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=0
    )
    # The backend takes conversations (and renders them) once sampling speaks chat; before that
    # it took text, which is then the same render's output, so the model sees the same tokens.
    takes_conversations = "Conversation" in str(inspect.signature(backend.generate).parameters["prompts"])
    batch_prompts = SampleConfig(prompt_set_id=0).batch_prompts
    backend.generate(
        convs[:2] if takes_conversations else [prompt_text(backend.tokenizer, c) for c in convs[:2]],
        n=args.k,
        params=SamplingParams(max_new_tokens=4),
        seed=0,
    )  # warm-up
    sync(args.device)
    start = time.perf_counter()
    completions = tokens = 0
    for first in range(0, len(convs), batch_prompts):
        batch: list[Any] = convs[first : first + batch_prompts]
        if not takes_conversations:
            batch = [prompt_text(backend.tokenizer, c) for c in batch]
        for samples in backend.generate(batch, n=args.k, params=params, seed=args.seed + first):
            completions += len(samples)
            tokens += sum(s.token_count or 0 for s in samples)
    sync(args.device)
    return time.perf_counter() - start, completions, tokens


def run_user_loop(path: Path, convs: list[Conversation], args: argparse.Namespace) -> tuple[float, int, int]:
    """(seconds, completions, generated tokens): one generate(num_return_sequences=K) per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.render import stop_token_ids

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(args.device).eval()
    stops = stop_token_ids(tok)  # a user passes eos_token_id=[eos, <|im_end|>] the same way
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]

    def one(conv: Conversation, max_new: int) -> tuple[int, int]:
        enc = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        enc = {k: v.to(args.device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                num_return_sequences=args.k,
                max_new_tokens=max_new,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=0,
                eos_token_id=stops,
                pad_token_id=pad,
            )
        made = 0
        for ids in out[:, enc["input_ids"].shape[1] :].tolist():
            cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
            made += cut
        return out.shape[0], made

    if getattr(tok, "chat_template", None) is None:  # the tiny model: the renderer's plain fallback
        from trainer.render import FALLBACK_TEMPLATE

        tok.chat_template = FALLBACK_TEMPLATE
    one(convs[0], 4)  # warm-up
    sync(args.device)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    completions = tokens = 0
    for conv in convs:
        c, t = one(conv, args.max_new_tokens)
        completions += c
        tokens += t
    sync(args.device)
    return time.perf_counter() - start, completions, tokens


def child(args: argparse.Namespace) -> None:
    """One way, one repeat, in this process: prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = model_path(args)
    convs = conversations(args.prompts)
    run = run_ranklab if args.only == "ranklab" else run_user_loop
    seconds, completions, tokens = run(path, convs, args)
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "completions": completions, "tokens": tokens, "peak_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="from_pretrained folder; default: SmolLM2-135M-Instruct (converted once)")
    ap.add_argument("--tiny", action="store_true", help="the tiny demo GPT-2 instead (built if absent)")
    ap.add_argument(
        "--artifacts", help="artifacts folder for the converted default model (RANKLAB_ARTIFACTS_DIR)"
    )
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own choice)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", choices=["ranklab", "user"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.only:
        child(args)
        return

    path = model_path(args)  # converts or builds once, before anything is timed
    forwarded = list(sys.argv[1:])
    if not args.model:
        forwarded += ["--model", str(path)]
    forwarded += ["--device", args.device]
    results: dict[str, list[dict[str, float]]] = {"ranklab": [], "user": []}
    for rep in range(args.repeats):
        for way in ("ranklab", "user") if rep % 2 == 0 else ("user", "ranklab"):
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--only", way, "--seed", str(args.seed + rep)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if out.returncode != 0:
                sys.exit(f"the {way} run failed:\n{out.stderr[-3000:]}")
            results[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep + 1}, {way}: {json.dumps(results[way][-1])}", flush=True)
    load = os.getloadavg()
    print(
        f"model: {path}, device: {args.device}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), torch threads: "
        f"{args.threads or 'default'}"
    )
    print(
        f"{args.prompts} conversations x K={args.k}, max_new_tokens={args.max_new_tokens}, "
        f"temperature={args.temperature}, top_p={args.top_p}, stop at EOS/end of turn; "
        f"median of {args.repeats} repeat(s), each way in its own process"
    )

    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in results[way])

    def rate(way: str, key: str) -> float:
        return statistics.median(r[key] / r["seconds"] for r in results[way])

    rows = [
        ("ranklab (LocalBackend, 16 prompts per generate)", "ranklab"),
        ("user loop (1 generate per prompt)", "user"),
    ]
    print(f"{'':<50} {'completions/s':>14} {'tokens/s':>10} {'seconds':>9} {'tokens':>8} {'peak MB':>9}")
    for label, way in rows:
        print(
            f"{label:<50} {rate(way, 'completions'):>14.2f} {rate(way, 'tokens'):>10.1f} "
            f"{med(way, 'seconds'):>9.1f} {med(way, 'tokens'):>8.0f} {med(way, 'peak_mb'):>9.0f}"
        )
    ratio = rate("ranklab", "completions") / rate("user", "completions")
    token_ratio = rate("ranklab", "tokens") / rate("user", "tokens")
    verdict = "met" if ratio >= FLOOR else "NOT met"
    print(
        f"ratio ranklab / user loop: {ratio:.2f}x completions/s, {token_ratio:.2f}x tokens/s "
        f"(floor {FLOOR:g}x: {verdict})"
    )


if __name__ == "__main__":
    main()
