"""PPO from files, without the database: `python -m trainer.ppo.launch`.

This is the entry for `accelerate launch` on several GPUs; see docs/ppo.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.chat import ChatError, Conversation, from_text, parse_conversation
from app.jsonl import json_rows
from app.runs.ptx import ptx_texts
from trainer.config import add_config_options, config_from_args, is_main_process, leave_process_group
from trainer.ppo.config import PPOConfig
from trainer.ppo.train import QuietReporter, train


class PrintReporter(QuietReporter):
    """`python -m trainer.ppo.launch`: one line per iteration on the main process."""

    def progress(self, fraction: float, message: str) -> None:
        print(f"[{fraction:6.1%}] {message}", flush=True)

    def log(self, line: str) -> None:
        print(line, flush=True)


def _read_ptx(path: str) -> list[str]:
    try:
        return ptx_texts(Path(path).read_text(encoding="utf-8").splitlines(), path)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def _read_prompts(path: str) -> list[Conversation]:
    """JSON Lines of {"messages": [{role, content}, ...]} (a conversation ending with a user
    turn), or {"prompt": "..."} / {"text": "..."} (one user message; "system" beside "prompt"
    adds a system message)."""
    out = []
    try:
        rows = list(json_rows(Path(path).read_text(encoding="utf-8").splitlines(), path))
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    for n, row in rows:
        text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
        try:
            if isinstance(row, dict) and "messages" in row:
                out.append(parse_conversation(row["messages"]))
            elif isinstance(text, str):
                out.append(from_text(text, system=row.get("system")))
            else:
                raise SystemExit(
                    f'{path} line {n}: needs "messages" (a list of messages) or a "prompt" string'
                )
        except ChatError as exc:
            raise SystemExit(f"{path} line {n}: {exc}") from exc
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
    ap.add_argument(
        "--prompts",
        required=True,
        help='JSON Lines of {"messages": [...]} conversations, or "prompt" (or "text") strings',
    )
    ap.add_argument("--ptx-file", help='JSON Lines of {"text": ...} for PPO-ptx')
    ap.add_argument("--out", required=True, help="where the new policy goes (written whole, at the end)")
    ap.add_argument("--work-dir", help="checkpoints (default: OUT.work); an existing one is resumed")
    add_config_options(ap, "PPOConfig")
    args = ap.parse_args(argv)
    cfg = config_from_args(PPOConfig, args)
    out = Path(args.out)
    summary = train(
        cfg,
        policy_path=args.policy,
        reward_path=args.reward,
        prompts=_read_prompts(args.prompts),
        ptx_texts=_read_ptx(args.ptx_file) if args.ptx_file else (),
        work_dir=Path(args.work_dir or f"{out}.work"),
        output_dir=out,
        reporter=PrintReporter(),
    )
    leave_process_group()
    if not is_main_process():  # one summary line, from the main process
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
