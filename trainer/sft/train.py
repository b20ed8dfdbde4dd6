"""Supervised fine-tuning's loop: demonstrations in, a saved policy out (InstructGPT step 1).

Phases: split by prompt (or a given validation set) → load and encode → (resume) → validation
loss before the first step → train with cosine decay, validations and checkpoints → validation
loss after the last step → save whole or not at all.

`accelerate` places it: a plain `python` run uses the CPU or the one GPU; under
`accelerate launch -m trainer.sft.launch --data FILE --out DIR` each process trains on its share
of every batch (DDP) with no change to this code. Only the main process writes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import render
from trainer.batching import length_buckets
from trainer.loop import (  # noqa: F401  (CHECKPOINT, Hooks re-exported: tests, launch.py)
    CHECKPOINT,
    Hooks,
    prepare_steps,
    save_whole,
    start_run,
)
from trainer.sft.choose import BEST, HISTORY, EpochChoice
from trainer.sft.config import CONFIG_FILE, SFTConfig
from trainer.sft.data import Demo, split_demos
from trainer.sft.loss import Example, collate, encode_example, forward_loss

__all__ = ["Hooks", "SFTConfig", "SFTResult", "train"]

# Residual dropout's name in the configs that have it (GPT-2, GPT-NeoX/Falcon, BERT-likes, OPT).
# Llama-family configs (SmolLM2, Qwen2) have only attention dropout, which is not the paper's.
RESIDUAL_DROPOUT = ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob", "residual_dropout", "dropout")


@dataclass
class SFTResult:
    path: Path
    metrics: dict[str, Any]
    resumed_from_step: int
    steps: int

    @property
    def val_loss_first(self) -> float | None:
        return self.metrics["val_loss_first"]

    @property
    def val_loss_last(self) -> float | None:
        return self.metrics["val_loss_last"]


# --- model --------------------------------------------------------------------------------


def load_policy(cfg: SFTConfig) -> tuple[torch.nn.Module, Any, dict[str, float]]:
    """(model in float32, tokenizer, the residual-dropout fields set and their old values).

    Dropout is a config value read when the modules are built, so it is set before loading."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not cfg.base_model:
        raise ValueError("base_model: give the policy to fine-tune (a hub id or folder)")
    config = AutoConfig.from_pretrained(cfg.base_model)
    old = {
        name: float(getattr(config, name))
        for name in RESIDUAL_DROPOUT
        if isinstance(getattr(config, name, None), int | float)
    }
    for name in old:
        setattr(config, name, cfg.dropout)
    # float32 weights whatever the checkpoint's dtype: autocast does the bf16 part on a GPU.
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, config=config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    return model, tokenizer, old


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    accelerator: Any = None,
) -> float | None:
    """Mean loss per reply token over `examples`, summed over every process; None when empty."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = sorted(range(rank, len(examples), world), key=lambda i: len(examples[i].input_ids))
    totals = torch.zeros(2, dtype=torch.float64)  # loss sum, tokens
    for start in range(0, len(mine), batch_size):
        batch = collate([examples[i] for i in mine[start : start + batch_size]], pad_id)
        with accelerator.autocast() if accelerator else nullcontext():
            loss, n = forward_loss(model, {k: v.to(device) for k, v in batch.items()})
        totals += torch.tensor([float(loss), n], dtype=torch.float64)
    if accelerator is not None and world > 1:
        totals = accelerator.reduce(totals.to(device), reduction="sum").cpu()
    model.train(was_training)
    loss_sum, tokens = totals.tolist()
    return loss_sum / tokens if tokens else None


# --- the run ------------------------------------------------------------------------------


def train(
    cfg: SFTConfig,
    demos: Sequence[Demo],
    *,
    out_dir: Path,
    work_dir: Path,
    validation: Sequence[Demo] | None = None,
    manifest: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    accelerator: Any = None,
    reward_path: str | None = None,
) -> SFTResult:
    """Fine-tune cfg.base_model on `demos` and save the policy to out_dir (which must not exist).

    validation: the held-out demonstrations; None splits `demos` by prompt (app.ranking.split_of,
    or each row's own split) and holds the test side out of both. work_dir holds the
    checkpoints; an existing checkpoint there is resumed. After each epoch the policy is
    measured (validation loss; with `reward_path`, the mean reward of its samples on the
    validation prompts) and the best epoch is the one saved (trainer.sft.choose).
    """
    hooks = hooks or Hooks()
    out_dir, work_dir, accelerator = start_run(cfg, out_dir, work_dir, accelerator, what="a policy")
    device, world = accelerator.device, accelerator.num_processes
    main = accelerator.is_main_process
    torch.manual_seed(cfg.seed)

    # -- split and encode
    if validation is None:
        sides = split_demos(demos)
        train_demos, val_demos = sides["train"], sides["validation"]
        held = f" ({len(sides['test'])} test prompts held out)"
    else:
        train_demos, val_demos, held = list(demos), list(validation), ""
    if not train_demos:
        raise ValueError("no training data: no demonstration on the training side of the split")
    hooks.log(f"{len(train_demos)} training demonstrations, {len(val_demos)} validation{held}")
    model, tokenizer, dropout_old = load_policy(cfg)
    hooks.log(
        f"residual dropout {cfg.dropout:g} on {', '.join(dropout_old)}"
        if dropout_old
        else f"{type(model).__name__} has no residual dropout setting: trained without dropout"
    )
    pad_id = render.pad_id(tokenizer)
    train_ex = [encode_example(tokenizer, d.messages, d.reply, cfg.max_length) for d in train_demos]
    val_ex = [encode_example(tokenizer, d.messages, d.reply, cfg.max_length) for d in val_demos]

    steps = prepare_steps(
        model, cfg, len(train_ex), work_dir, accelerator=accelerator, hooks=hooks, warmup=cfg.warmup
    )
    model, plan, total, start = steps.model, steps.plan, steps.total, steps.start
    val_first = steps.saved.get("val_loss_first")
    per_epoch = max(1, total // cfg.epochs)  # every epoch has the same number of steps
    choice = EpochChoice(
        work_dir, validation=val_demos, reward_path=reward_path, max_length=cfg.max_length, seed=cfg.seed
    )

    # -- validation before the first step
    if not start:
        val_first = evaluate(model, val_ex, pad_id, device, cfg.batch_size, accelerator)
        if main and val_first is not None:
            hooks.metric(0, val_loss=val_first)
    hooks.progress(0.02, f"validation loss before training: {_show(val_first)}")

    # -- train
    train_loss: float | None = None
    began = time.monotonic()
    seen_tokens = 0
    rank = accelerator.process_index
    for step in range(start, total):
        # Every reply token of the step weighs the same: the loss is summed and divided once by
        # the step's learned tokens on all processes (× world, since DDP averages gradients).
        step_tokens = max(1, sum(train_ex[i].n_learned for m in plan[step] for i in m))
        step_loss = 0.0
        for j, micro in enumerate(plan[step]):
            mine = [train_ex[i] for i in micro[rank::world]]
            # One forward and backward per length bucket (trainer.batching): the loss is a sum,
            # so the gradient is the padded batch's at about the cost of its real tokens.
            buckets = length_buckets([len(e.input_ids) for e in mine])
            for b, bucket in enumerate(buckets):
                batch = {k: v.to(device) for k, v in collate([mine[i] for i in bucket], pad_id).items()}
                syncing = j == len(plan[step]) - 1 and b == len(buckets) - 1
                with nullcontext() if syncing else accelerator.no_sync(model), accelerator.autocast():
                    loss_sum, _ = forward_loss(model, batch)
                    loss = loss_sum * (world / step_tokens)
                    accelerator.backward(loss)
                step_loss += float(loss_sum.detach()) / step_tokens
                seen_tokens += int(batch["attention_mask"].sum())
        steps.optimizer_step(cfg.max_grad_norm)
        done = step + 1
        if world > 1:  # each process holds its share of the step's token-weighted loss
            step_loss = float(accelerator.reduce(torch.tensor([step_loss], device=device), reduction="sum"))
        train_loss = step_loss
        if main:
            hooks.metric(done, train_loss=train_loss, lr=steps.lr)
        epoch_end = done % per_epoch == 0 and done < total
        if (done % cfg.eval_every == 0 or epoch_end) and done < total:
            val = evaluate(model, val_ex, pad_id, device, cfg.batch_size, accelerator)
            if main and val is not None:
                hooks.metric(done, val_loss=val)
            if epoch_end:
                _choose(choice, done // per_epoch, accelerator, model, tokenizer, val, hooks, last=False)
        steps.checkpoint_if_due(cfg, done, val_loss_first=val_first)
        hooks.progress(0.02 + 0.93 * done / total, f"step {done}/{total}, loss {step_loss:.4f}")
    seconds = time.monotonic() - began

    # -- validation after the last step
    val_last = evaluate(model, val_ex, pad_id, device, cfg.batch_size, accelerator)
    if main and val_last is not None:
        hooks.metric(total, val_loss=val_last)
    hooks.progress(0.97, f"validation loss after training: {_show(val_last)}")
    bare = accelerator.unwrap_model(model)
    _choose(choice, cfg.epochs, accelerator, model, tokenizer, val_last, hooks, last=True)
    chosen = choice.restore(bare) if main else {}
    if chosen:
        hooks.log(f"kept epoch {chosen['kept_epoch']}: {chosen['kept_because']}")

    metrics = {
        "val_loss_first": val_first,
        "val_loss_last": val_last,
        "train_loss": train_loss,
        "train_demonstrations": len(train_demos),
        "val_demonstrations": len(val_demos),
        "train_reply_tokens": sum(e.n_learned for e in train_ex),
        "steps": total,
        "resumed_from_step": start,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(seen_tokens * world / seconds, 2) if seconds > 0 else None,
        **chosen,
    }

    # -- save whole: a temporary folder renamed into place
    for name, value in dropout_old.items():  # the saved config is the base's: dropout is training's
        setattr(bare.config, name, value)
    files = {CONFIG_FILE: asdict(cfg), "data_manifest.json": manifest or {}, "metrics.json": metrics}
    save_whole(out_dir, work_dir, accelerator=accelerator, model=bare, tokenizer=tokenizer, files=files)
    if main:  # the kept epoch's weights and the epochs' record go with the checkpoints
        shutil.rmtree(work_dir / BEST, ignore_errors=True)
        (work_dir / HISTORY).unlink(missing_ok=True)
    # No progress call from here on: it may raise JobCancelled, and the policy is already whole.
    return SFTResult(path=out_dir, metrics=metrics, resumed_from_step=start, steps=total)


def _choose(
    choice: EpochChoice,
    epoch: int,
    accelerator: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    val: float | None,
    hooks: Hooks,
    *,
    last: bool,
) -> None:
    """The main process measures the epoch just ended (the others wait) and reports it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        row = choice.after_epoch(
            epoch, accelerator.unwrap_model(model), tokenizer, val, accelerator.device, keep=not last
        )
        figures = {k: row[k] for k in ("val_loss", "mean_reward") if row.get(k) is not None}
        if figures:
            hooks.metric(epoch, **{f"{k}_by_epoch": v for k, v in figures.items()})
        hooks.log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    accelerator.wait_for_everyone()


def _show(loss: float | None) -> str:
    return "no validation data" if loss is None else f"{loss:.4f}"
