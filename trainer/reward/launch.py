"""Reward-model training from files, without the database: `python -m trainer.reward.launch`.

This is the entry for `accelerate launch` on several GPUs (see docs/reward.md): each process
trains on its share of every batch, and only the main process writes the model and metrics.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from trainer.config import launch_values
from trainer.reward.config import RewardConfig
from trainer.reward.model import Group
from trainer.reward.train import Hooks, train


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
    parser.add_argument("--config", type=Path, help="RewardConfig fields as JSON")
    parser.add_argument("--out", type=Path, required=True, help="model folder to create")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one config field (JSON value)",
    )
    args = parser.parse_args(argv)
    values = launch_values(args.config, args.overrides)
    cfg = RewardConfig.from_dict(values)
    groups = read_groups(args.groups)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    hooks = Hooks(
        log=lambda line: print(line, flush=True) if rank0 else None,
        metric=lambda step, **v: (
            print(json.dumps({"step": step, **v}), flush=True) if rank0 and "val_accuracy" in v else None
        ),
    )
    result = train(
        cfg,
        groups,
        out_dir=args.out,
        work_dir=args.out.with_name(f".{args.out.name}.work"),
        manifest={"groups_file": str(args.groups), "groups": len(groups)},
        hooks=hooks,
    )
    if rank0:
        print(json.dumps(result.metrics))


if __name__ == "__main__":
    main()
