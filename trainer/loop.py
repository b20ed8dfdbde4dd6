"""What the reward-model and SFT loops share: the opening (config check, Accelerator), the step
plan and schedule, checkpoints written aside and swapped in whole, and the final save.

Each loop keeps its own data, loss and evaluation; these pieces are the same in both, so they
live once here. Only the main process writes files.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

CHECKPOINT = "checkpoint"


@dataclass
class Hooks:
    """How a run reports; the job handler points these at the job row, the CLI at tqdm."""

    progress: Callable[[float, str], None] = lambda fraction, message: None
    metric: Callable[..., None] = lambda step, **values: None
    log: Callable[[str], None] = lambda line: None


def print_hooks(shown: str) -> Hooks:
    """A launcher's hooks: log lines, and the metrics that carry `shown` as JSON, on rank 0."""
    from trainer.config import is_main_process

    main = is_main_process()
    return Hooks(
        log=lambda line: print(line, flush=True) if main else None,
        metric=lambda step, **v: (
            print(json.dumps({"step": step, **v}), flush=True) if main and shown in v else None
        ),
    )


class Schedule(Protocol):
    """The config fields a step plan reads (RewardConfig's and SFTConfig's)."""

    batch_size: int
    grad_accum: int
    epochs: int
    seed: int


# --- opening and schedule -----------------------------------------------------------------


def start_run(cfg: Any, out_dir: Path | str, work_dir: Path | str, accelerator: Any, *, what: str) -> Any:
    """The opening every training loop shares (reward model, SFT): check the config, refuse an
    existing output, and make the Accelerator (bf16 on a GPU when the config asks) unless given.
    Returns (out_dir, work_dir, accelerator)."""
    from accelerate import Accelerator

    cfg.validate()
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists already; {what} is never overwritten")
    if accelerator is None:
        mixed = "bf16" if cfg.bf16 and torch.cuda.is_available() else "no"
        accelerator = Accelerator(mixed_precision=mixed)
    return out_dir, work_dir, accelerator


def step_plan(n_items: int, cfg: Schedule, world: int) -> list[list[list[int]]]:
    """For every optimizer step, its micro-batches as lists of item indices (groups for the
    reward model, examples for SFT), all processes together.

    The same on every process (seeded), so a resumed run continues exactly where it stopped.
    A tail too small to give every process an item is dropped.
    """
    per_micro = cfg.batch_size * world
    steps: list[list[list[int]]] = []
    for epoch in range(cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(n_items, generator=gen).tolist()
        micros = [order[i : i + per_micro] for i in range(0, n_items, per_micro)]
        micros = [m for m in micros if len(m) >= world]
        steps.extend(micros[i : i + cfg.grad_accum] for i in range(0, len(micros), cfg.grad_accum))
    return steps


def lr_factor(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """LambdaLR's factor: linear warm-up over `warmup` steps, then a cosine from 1 to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def optimizer_for(model: torch.nn.Module, cfg: Any, total: int, warmup: int = 0) -> tuple[Any, Any]:
    """AdamW at cfg.lr with cfg.weight_decay, and its schedule (lr_factor) over `total` steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total, warmup, cfg.min_lr_ratio))
    return optimizer, scheduler


# --- checkpoints --------------------------------------------------------------------------


def save_checkpoint(
    work_dir: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: dict
) -> None:
    """Model, optimizer and schedule, and `state` (the step, the config, ...) as state.json,
    written aside and swapped in whole."""
    from safetensors.torch import save_model

    tmp = work_dir / f"{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    final, old = work_dir / CHECKPOINT, work_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    work_dir: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    """The state.json of the last whole checkpoint, its weights and optimizer loaded into the
    given objects; {} when there is none."""
    from safetensors.torch import load_model

    ckpt = work_dir / CHECKPOINT
    if not (ckpt / "state.json").exists():
        return {}
    load_model(model, str(ckpt / "model.safetensors"))
    state = torch.load(ckpt / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    saved: dict[str, Any] = json.loads((ckpt / "state.json").read_text())
    return saved


@dataclass
class Steps:
    """A loop's plan (step_plan), its prepared model and optimizer, the schedule, and the
    checkpoint's state it resumes from ({} on a fresh run); it steps and checkpoints them."""

    plan: list[list[list[int]]]
    model: Any
    optimizer: Any
    scheduler: Any
    saved: dict[str, Any]
    accelerator: Any
    work_dir: Path
    hooks: Hooks

    @property
    def total(self) -> int:
        return len(self.plan)

    @property
    def start(self) -> int:
        return int(self.saved.get("step", 0))

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def optimizer_step(self, max_grad_norm: float) -> None:
        """The end of every step: clip, step the optimizer and the schedule, clear the gradients."""
        self.accelerator.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint_if_due(self, cfg: Any, done: int, **extra: Any) -> None:
        """Every cfg.checkpoint_every steps (not after the last), the main process saves a
        checkpoint whose state is the step, `extra` and the config."""
        if not (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < self.total):
            return
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.work_dir,
                model=self.accelerator.unwrap_model(self.model),
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state={"step": done, **extra, "config": asdict(cfg)},
            )
            self.hooks.log(f"checkpoint at step {done}")


def prepare_steps(
    model: Any, cfg: Any, n_items: int, work_dir: Path, *, accelerator: Any, hooks: Hooks, warmup: int = 0
) -> Steps:
    """Plan the steps over `n_items`, make the optimizer and schedule, load the last checkpoint
    in work_dir (before `prepare`, so the weights load into the bare model), then prepare."""
    plan = step_plan(n_items, cfg, accelerator.num_processes)
    optimizer, scheduler = optimizer_for(model, cfg, len(plan), warmup)
    model.train()
    work_dir.mkdir(parents=True, exist_ok=True)
    saved = load_checkpoint(work_dir, model=model, optimizer=optimizer, scheduler=scheduler)
    if saved:
        hooks.log(f"resumed from checkpoint at step {saved['step']} of {len(plan)}")
    model, optimizer = accelerator.prepare(model, optimizer)
    return Steps(plan, model, optimizer, scheduler, saved, accelerator, work_dir, hooks)


# --- the end ------------------------------------------------------------------------------


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def save_whole(
    out_dir: Path, work_dir: Path, *, accelerator: Any, model: Any, tokenizer: Any, files: dict[str, Any]
) -> None:
    """The trained model, its tokenizer and `files` (name → JSON value) written to a temporary
    folder renamed into place, so out_dir is whole or absent; then the checkpoints go."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = out_dir.with_name(f".{out_dir.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            for name, value in files.items():
                write_json(tmp / name, value)
            tmp.rename(out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(work_dir / CHECKPOINT, ignore_errors=True)
    accelerator.wait_for_everyone()
