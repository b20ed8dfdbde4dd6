"""SFT from files, without the database: `python -m trainer.sft.launch`.

This is the entry for `accelerate launch` on several GPUs: each process trains on its share of
every batch, and only the main process writes the policy and prints the summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.config import add_config_options, config_from_args, is_main_process, leave_process_group
from trainer.loop import print_hooks
from trainer.sft.config import SFTConfig
from trainer.sft.data import read_demos
from trainer.sft.train import train


def main(argv: list[str] | None = None) -> None:
    """Fine-tune a policy on demonstrations, e.g. on several GPUs:

    accelerate launch -m trainer.sft.launch --data demos.jsonl --out ./sft \\
        --set base_model=HuggingFaceTB/SmolLM2-135M-Instruct --set epochs=16 --set dropout=0.2

    The data is JSON Lines of {"messages": [..., {"role": "assistant", "content": reply}]}, as
    `ranklab export sft` writes and TRL's SFTTrainer reads; without --validation, rows are split by
    prompt (each row's "split" when it has one) and the test side is held out.
    """
    ap = argparse.ArgumentParser(
        prog="python -m trainer.sft.launch",
        description=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", type=Path, required=True, help="demonstrations, JSON Lines (.gz too)")
    ap.add_argument("--validation", type=Path, help="held-out demonstrations (then --data is all training)")
    ap.add_argument(
        "--out", type=Path, required=True, help="where the new policy goes (written whole, at the end)"
    )
    ap.add_argument(
        "--work-dir", type=Path, help="checkpoints (default: .OUT.work); an existing one is resumed"
    )
    add_config_options(ap, "SFTConfig")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(SFTConfig, args)
        demos = read_demos(args.data)
        validation = read_demos(args.validation) if args.validation else None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    rank0 = is_main_process()
    hooks = print_hooks("val_loss")
    manifest = {"data_file": str(args.data), "demonstrations": len(demos)}
    if validation is not None:
        manifest |= {"validation_file": str(args.validation), "validation_demonstrations": len(validation)}
    result = train(
        cfg,
        demos,
        validation=validation,
        out_dir=args.out,
        work_dir=args.work_dir or args.out.with_name(f".{args.out.name}.work"),
        manifest=manifest,
        hooks=hooks,
    )
    leave_process_group()
    if rank0:
        print(json.dumps({"out": str(result.path), **result.metrics}))


if __name__ == "__main__":
    main()
