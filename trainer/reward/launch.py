"""Reward-model training from files, without the database: `python -m trainer.reward.launch`.

This is the entry for `accelerate launch` on several GPUs (see docs/reward.md): each process
trains on its share of every batch, and only the main process writes the model and metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.config import add_config_options, config_from_args, is_main_process, leave_process_group
from trainer.loop import print_hooks
from trainer.reward.config import RewardConfig
from trainer.reward.model import Group
from trainer.reward.train import train


def read_groups(path: Path) -> list[Group]:
    """JSON Lines of {"messages" | "prompt", "completions": [...], "rankings": [[rank, ...], ...]}
    (ranklab's `groups` export: the prompt conversation as `messages`, or a `prompt` text that
    is one user message; `ranks` of one labeler also accepted)."""
    import gzip

    from trainer.reward.data import group_from_row

    out = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(group_from_row(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}, line {line_no}: {exc}") from exc
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.reward.launch",
        description="Train a reward model on a groups file; run under `accelerate launch` for several GPUs.",
    )
    parser.add_argument("--groups", type=Path, required=True, help="groups JSON Lines file")
    parser.add_argument("--out", type=Path, required=True, help="model folder to create")
    add_config_options(parser, "RewardConfig")
    args = parser.parse_args(argv)
    cfg = config_from_args(RewardConfig, args)
    groups = read_groups(args.groups)
    rank0 = is_main_process()
    hooks = print_hooks("val_accuracy")
    result = train(
        cfg,
        groups,
        out_dir=args.out,
        work_dir=args.out.with_name(f".{args.out.name}.work"),
        manifest={"groups_file": str(args.groups), "groups": len(groups)},
        hooks=hooks,
    )
    leave_process_group()
    if rank0:
        print(json.dumps(result.metrics))


if __name__ == "__main__":
    main()
