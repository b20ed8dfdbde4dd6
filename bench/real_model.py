"""The loop's training on the real default model: a few reward-model steps and a few PPO iterations
from SmolLM2-135M-Instruct, on CPU, with time per step and peak memory.

  reward: trainer.reward.train.train from the SmolLM2 backbone (AutoModelForSequenceClassification
          on the Llama architecture: a fresh one-output score head), rankings of K=4 replies to the
          demo conversations, batch of 4 prompts (16 forward passes per step);
  ppo:    trainer.ppo.train.train from the SmolLM2 policy, the value network and the scores from
          a SmolLM2 reward model (the same backbone with a fresh head), the demo conversations.

Both see the conversations through trainer.render (the model's chat template) where the trainer
takes conversations; on a tree where it still takes text, the bench passes the rendered prompt
text and says so. Each part runs in its own process, so its peak RSS is its own. The machine's
load average is printed with the figures.

  python bench/real_model.py                     # both parts, SmolLM2 converted if absent
  python bench/real_model.py --part ppo --ppo-iterations 4
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench.common import timed_ppo  # noqa: E402
from bench.sampling import conversations  # noqa: E402

# Four replies per conversation, best first: a direct answer, a vaguer one, an off-topic one, and
# a refusal. The ranking is fixed (1..4), so every group gives C(4,2) = 6 comparisons.
REPLIES = (
    "Here is a short, direct answer to your question.",
    "I think it depends, but it is probably fine.",
    "Octopuses have three hearts.",
    "I cannot help with that.",
)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_reward(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from trainer.reward.config import RewardConfig
    from trainer.reward.model import Group
    from trainer.reward.train import Hooks, train

    through_render = "messages" in Group.__dataclass_fields__
    convs = conversations(args.reward_prompts)
    if not through_render:
        from transformers import AutoTokenizer

        from trainer.render import prompt_text

        tok = AutoTokenizer.from_pretrained(path)
    groups = []
    for i, conv in enumerate(convs):
        # Distinct prompts (the split is by prompt): a numbered last turn.
        numbered = [*conv[:-1], {"role": "user", "content": f"{conv[-1]['content']} ({i})"}]
        common = dict(completions=REPLIES, rankings=((1, 2, 3, 4),), split="train")
        if through_render:
            groups.append(Group(messages=numbered, **common))  # type: ignore[call-arg, arg-type]
        else:  # a trainer that still takes text: the prompt as the template renders it
            groups.append(Group(prompt=prompt_text(tok, numbered), **common))  # type: ignore[call-arg, arg-type]
    cfg = RewardConfig(
        base_model=str(path),
        batch_size=args.reward_batch,
        max_length=256,
        eval_every=10**6,
        checkpoint_every=10**6,
        normalize_samples=8,
    )
    stamps: list[float] = []
    hooks = Hooks(
        metric=lambda step, **values: stamps.append(time.perf_counter()) if "train_loss" in values else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        result = train(cfg, groups, out_dir=Path(tmp) / "out", work_dir=Path(tmp) / "work", hooks=hooks)
        wall = time.perf_counter() - began
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "through_render": through_render,
        "steps": result.steps,
        "first_step_end_s": stamps[0] - began if stamps else None,
        "step_s_median": statistics.median(steps) if steps else None,
        "wall_s": wall,
        "peak_mb": peak_mb(),
    }


def run_ppo(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import inspect

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.ppo.train import train
    from trainer.render import prompt_text

    through_render = "Conversation" in str(inspect.signature(train).parameters["prompts"].annotation)
    convs = conversations(args.ppo_batch * 2)
    with tempfile.TemporaryDirectory() as tmp:
        reward = Path(tmp) / "reward"
        tok = AutoTokenizer.from_pretrained(path)
        head = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        head.config.pad_token_id = tok.pad_token_id
        head.save_pretrained(reward)
        tok.save_pretrained(reward)
        del head
        prompts: list[Any] = convs if through_render else [prompt_text(tok, c) for c in convs]
        collected, wall = timed_ppo(
            Path(tmp),
            policy=path,
            reward=reward,
            prompts=prompts,
            iterations=args.ppo_iterations,
            batch_size=args.ppo_batch,
            mini_batch_size=max(1, args.ppo_batch // 2),
            ppo_epochs=1,
            max_new_tokens=args.max_new_tokens,
            max_prompt_tokens=192,
        )
    rows = [r for r in collected if "time_generate" in r]
    steady = rows[1:] or rows
    med = {
        k: statistics.median(r[k] for r in steady)
        for k in ("time_generate", "time_score", "time_update", "tokens_per_second", "response_length")
    }
    return {
        "through_render": through_render,
        "iterations": len(rows),
        "per_iteration": [
            {k: round(r[k], 3) for k in ("time_generate", "time_score", "time_update", "response_length")}
            for r in rows
        ],
        **{f"{k}_median": v for k, v in med.items()},
        "wall_s": wall,
        "peak_mb": peak_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="from_pretrained folder; default: SmolLM2-135M-Instruct (converted once)")
    ap.add_argument("--artifacts", help="artifacts folder for the converted default model")
    ap.add_argument("--part", choices=["reward", "ppo", "both"], default="both")
    ap.add_argument("--reward-prompts", type=int, default=16, help="ranked conversations (K=4 each)")
    ap.add_argument("--reward-batch", type=int, default=4, help="prompts per reward-model step")
    ap.add_argument("--ppo-iterations", type=int, default=3)
    ap.add_argument("--ppo-batch", type=int, default=8, help="episodes per PPO iteration")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="PPO response length cap")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own choice)")
    ap.add_argument("--only", choices=["reward", "ppo"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run = run_reward if args.only == "reward" else run_ppo
        print(json.dumps(run(Path(args.model), args)))
        return

    if args.model:
        path = Path(args.model)
    else:
        from app.config import get_settings
        from trainer.models.smollm2 import ensure_default_model_with_bar

        path = ensure_default_model_with_bar(Path(args.artifacts or get_settings().artifacts_dir))
    forwarded = [a for a in sys.argv[1:] if a not in ("--model", args.model)] + ["--model", str(path)]
    parts = ["reward", "ppo"] if args.part == "both" else [args.part]
    for part in parts:
        out = subprocess.run(
            [sys.executable, __file__, *forwarded, "--only", part], capture_output=True, text=True, cwd=ROOT
        )
        if out.returncode != 0:
            sys.exit(f"the {part} run failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        load = os.getloadavg()
        where = f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
        render = "through trainer.render" if r["through_render"] else "prompt text rendered by the bench"
        if part == "reward":
            print(
                f"reward model from {path.name} (Llama + score head), {args.reward_prompts} rankings of K=4, "
                f"{args.reward_batch} prompts per step, {render}; {where}"
            )
            print(
                f"  {r['steps']} steps: {r['step_s_median']:.2f} s per step (median after the first; "
                f"the first "
                f"ended {r['first_step_end_s']:.1f} s in, loading included), {r['wall_s']:.1f} s in all "
                f"(saving ~540 MB included), peak RSS {r['peak_mb']:.0f} MB"
            )
        else:
            print(
                f"PPO from {path.name}, value and reward from its backbone with a score head, "
                f"{args.ppo_batch} episodes per iteration, up to {args.max_new_tokens} new tokens, "
                f"{render}; {where}"
            )
            for row in r["per_iteration"]:
                print(
                    f"  iteration: generate {row['time_generate']:.1f} s, score {row['time_score']:.1f} s, "
                    f"update {row['time_update']:.1f} s, mean response {row['response_length']:.1f} tokens"
                )
            total = r["time_generate_median"] + r["time_score_median"] + r["time_update_median"]
            print(
                f"  {total:.1f} s per iteration (median after the first), "
                f"{r['tokens_per_second_median']:.1f} response tokens/s, {r['wall_s']:.1f} s in all, "
                f"peak RSS {r['peak_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
