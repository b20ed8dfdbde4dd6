"""PPO from files, without the database: `python -m trainer.ppo.launch`.

This is the entry for `accelerate launch` on several GPUs; see docs/ppo.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.ppo.config import PPOConfig
from trainer.ppo.train import QuietReporter, train


class PrintReporter(QuietReporter):
    """`python -m trainer.ppo.launch`: one line per iteration on the main process."""

    def progress(self, fraction: float, message: str) -> None:
        print(f"[{fraction:6.1%}] {message}", flush=True)

    def log(self, line: str) -> None:
        print(line, flush=True)


def _read_lines(path: str, keys: tuple[str, ...]) -> list[str]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            text = next((row[k] for k in keys if isinstance(row, dict) and isinstance(row.get(k), str)), None)
            if text is None:
                raise SystemExit(f"{path} line {n}: needs a string field {' or '.join(keys)}")
            out.append(text)
    return out


def main(argv: list[str] | None = None) -> None:
    """PPO from files, e.g. on several GPUs (each process takes its share of every batch):

    accelerate launch -m trainer.ppo.launch --policy ./sft --reward ./rm --prompts prompts.jsonl \\
        --out ./policy-v2 --set batch_size=512 --set ptx_coef=27.8 --ptx-file pretrain.jsonl
    """
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m trainer.ppo.launch",
        description=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--policy", required=True, help="starting policy: folder or hub id")
    ap.add_argument("--reward", required=True, help="reward model folder (also the value network's start)")
    ap.add_argument("--prompts", required=True, help='JSON Lines with a "prompt" (or "text") field')
    ap.add_argument("--ptx-file", help='JSON Lines of {"text": ...} for PPO-ptx')
    ap.add_argument("--out", required=True, help="where the new policy goes (written whole, at the end)")
    ap.add_argument("--work-dir", help="checkpoints (default: OUT.work); an existing one is resumed")
    ap.add_argument("--config", help="JSON file of PPOConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="one PPOConfig field")
    args = ap.parse_args(argv)
    values: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    for item in args.set:
        name, _, raw = item.partition("=")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    cfg = PPOConfig.from_dict(values)
    out = Path(args.out)
    summary = train(
        cfg,
        policy_path=args.policy,
        reward_path=args.reward,
        prompts=_read_lines(args.prompts, ("prompt", "text")),
        ptx_texts=_read_lines(args.ptx_file, ("text",)) if args.ptx_file else (),
        work_dir=Path(args.work_dir or f"{out}.work"),
        output_dir=out,
        reporter=PrintReporter(),
    )
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line, from the main process
        return
    print(
        json.dumps(
            {
                "out": str(out),
                "first_mean_reward": summary.first_mean_reward,
                "last_mean_reward": summary.last_mean_reward,
                "last_kl": summary.last_kl,
            }
        )
    )


if __name__ == "__main__":
    main()
