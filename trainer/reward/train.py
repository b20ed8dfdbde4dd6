"""The reward model's training loop: groups in, a saved, normalised reward model out.

Phases: split by prompt → load and encode → (resume) → train with validation and checkpoints
→ normalise on the reference policy's completions → save whole or not at all.

`accelerate` places it: a plain `python` run uses the CPU or the one GPU; under
`accelerate launch -m trainer.reward.launch --groups FILE --config FILE --out DIR` each process
trains on its share of every batch (DDP) with no change to this code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from app.chat import Conversation
from app.ranking import SPLITS, split_of
from trainer import render
from trainer.batching import length_buckets
from trainer.loop import (  # noqa: F401  (Hooks, step_plan re-exported: job.py, launch.py, tests)
    Hooks,
    lr_factor,
    prepare_steps,
    save_whole,
    start_run,
    step_plan,
)
from trainer.reward.config import RewardConfig  # noqa: F401  (re-exported: job.py, launch.py import it here)
from trainer.reward.model import (
    NORM_MEAN,
    NORM_STD,
    Encoded,
    Group,
    collate,
    encode_reply,
    grouped_loss,
    load_reward_model,
    pair_correct,
    plan_pairs,
    score,
)


@dataclass
class TrainResult:
    path: Path
    metrics: dict[str, Any]
    resumed_from_step: int
    steps: int


# --- data ---------------------------------------------------------------------------------


def split_groups(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Groups by the export's split (train/validation/test): each group's own, as the export
    wrote it, else app.ranking.split_of of its prompt text with the export's default seed and
    fractions. Same prompt, same side; the test split is held out of training and validation."""
    out: dict[str, list[Group]] = {name: [] for name in SPLITS}
    for g in groups:
        side = g.split or split_of(g.prompt)
        if side not in out:
            raise ValueError(f"split: one of {', '.join(SPLITS)}, not {side!r} (prompt {g.prompt[:40]!r})")
        out[side].append(g)
    return out


def encode_groups(tokenizer: Any, groups: Sequence[Group], max_length: int) -> list[list[Encoded]]:
    """Every (conversation, completion) of every group, rendered by encode_reply."""
    return [[encode_reply(tokenizer, g.messages, c, max_length) for c in g.completions] for g in groups]


def cosine_to(ratio: float, total: int) -> Callable[[int], float]:
    """The reward model's schedule: a cosine from 1 to `ratio` over `total` steps, no warm-up."""
    return lr_factor(total, 0, ratio)


def scores_of(
    model: torch.nn.Module, enc: Sequence[Encoded], pad_id: int, device: torch.device
) -> torch.Tensor:
    """Raw scores (N,) of the encoded sequences, in order, one forward call per length bucket
    (trainer.batching): the same scores as one call padded to the longest, at about the cost
    of the real tokens. Under DDP every call but the last skips the gradient sync set-up, so the
    one backward through all of them syncs once, as for one call."""
    buckets = length_buckets([len(e.input_ids) for e in enc])
    parts = []
    for j, bucket in enumerate(buckets):
        batch = {k: v.to(device) for k, v in collate([enc[i] for i in bucket], pad_id).items()}
        no_sync = getattr(model, "no_sync", None)  # DDP's
        with nullcontext() if j == len(buckets) - 1 or no_sync is None else no_sync():
            parts.append(score(model, batch).float())  # (n_bucket,)
    order = torch.tensor([i for bucket in buckets for i in bucket], device=device)  # bucket order
    return torch.cat(parts)[torch.argsort(order)]  # (N,) back in the given order


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    groups: Sequence[Group],
    encoded: Sequence[list[Encoded]],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    accelerator: Any = None,
) -> dict[str, float]:
    """Validation loss (mean over rankings) and pairwise accuracy, summed over every process."""
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    idx = list(range(rank, len(groups), world))
    totals = torch.zeros(4, dtype=torch.float64)  # loss·R, R, correct, pairs
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        plan = plan_pairs([groups[i] for i in chunk]).to(device)
        if plan.n_rankings == 0:
            continue
        s = scores_of(model, [e for i in chunk for e in encoded[i]], pad_id, device)
        right, pairs = pair_correct(s, plan)
        totals += torch.tensor(
            [float(grouped_loss(s, plan)) * plan.n_rankings, plan.n_rankings, right, pairs],
            dtype=torch.float64,
        )
    if accelerator is not None and world > 1:
        totals = accelerator.reduce(totals.to(device), reduction="sum").cpu()
    model.train()
    loss_r, n_r, right, pairs = totals.tolist()
    return {
        "val_loss": loss_r / n_r if n_r else float("nan"),
        "val_accuracy": right / pairs if pairs else float("nan"),
        "val_pairs": int(pairs),
    }


# --- the run ------------------------------------------------------------------------------


def train(
    cfg: RewardConfig,
    groups: Sequence[Group],
    *,
    out_dir: Path,
    work_dir: Path,
    reference: Sequence[tuple[Conversation, str]] | None = None,
    manifest: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    accelerator: Any = None,
) -> TrainResult:
    """Train, validate, normalise and save to out_dir (which must not exist yet).

    reference: (conversation, completion) samples of the reference policy for the normalisation,
    rendered as the training data is; None uses every completion of the training data.
    work_dir holds the checkpoints.
    """
    hooks = hooks or Hooks()
    out_dir, work_dir, accelerator = start_run(cfg, out_dir, work_dir, accelerator, what="a reward model")
    device, world = accelerator.device, accelerator.num_processes
    main = accelerator.is_main_process
    torch.manual_seed(cfg.seed)

    # -- split and encode
    sides = split_groups(groups)
    train_groups = [g for g in sides["train"] if g.n_pairs() > 0]
    val_groups = sides["validation"]
    if not train_groups:
        raise ValueError("no training data: no ranking with two differently ranked completions")
    hooks.log(
        f"{len(train_groups)} training prompts, {len(val_groups)} validation prompts "
        f"({len(sides['test'])} test prompts held out), "
        f"{sum(g.n_pairs() for g in train_groups)} training comparisons"
    )
    model, tokenizer = load_reward_model(cfg.base_model)
    pad_id = render.pad_id(tokenizer)
    train_enc = encode_groups(tokenizer, train_groups, cfg.max_length)
    val_enc = encode_groups(tokenizer, val_groups, cfg.max_length)

    steps = prepare_steps(model, cfg, len(train_groups), work_dir, accelerator=accelerator, hooks=hooks)
    model, plan, total, start = steps.model, steps.plan, steps.total, steps.start

    # -- train
    history: dict[str, Any] = {}
    began = time.monotonic()
    seen_pairs = 0
    for step in range(start, total):
        micros = [[train_groups[i] for i in m[accelerator.process_index :: world]] for m in plan[step]]
        micro_encs = [
            [e for i in m[accelerator.process_index :: world] for e in train_enc[i]] for m in plan[step]
        ]
        plans = [plan_pairs(m).to(device) for m in micros]
        n_rankings = sum(p.n_rankings for p in plans) or 1
        step_loss = 0.0
        for i, (p, enc) in enumerate(zip(plans, micro_encs, strict=True)):
            syncing = i == len(plans) - 1
            with nullcontext() if syncing else accelerator.no_sync(model), accelerator.autocast():
                s = scores_of(model, enc, pad_id, device)  # (N,) one pass per completion
                # Weighted so the step's loss is the mean over all its rankings.
                loss = grouped_loss(s, p) * (p.n_rankings / n_rankings)
                accelerator.backward(loss)
            step_loss += float(loss.detach())
            seen_pairs += int(p.win.numel())
        steps.optimizer_step(cfg.max_grad_norm)
        done = step + 1
        lr = steps.lr
        if main:
            hooks.metric(done, train_loss=step_loss, lr=lr)
        history["train_loss"] = step_loss
        if done % cfg.eval_every == 0 and done < total:
            val = evaluate(model, val_groups, val_enc, pad_id, device, cfg.eval_batch_size, accelerator)
            if main and val["val_pairs"]:
                hooks.metric(done, val_loss=val["val_loss"], val_accuracy=val["val_accuracy"])
        steps.checkpoint_if_due(cfg, done)
        hooks.progress(0.95 * done / total, f"step {done}/{total}, loss {step_loss:.4f}")
    seconds = time.monotonic() - began

    # -- final validation
    val = evaluate(model, val_groups, val_enc, pad_id, device, cfg.eval_batch_size, accelerator)
    if main and val["val_pairs"]:
        hooks.metric(total, val_loss=val["val_loss"], val_accuracy=val["val_accuracy"])
    hooks.progress(0.96, "normalising the score on the reference policy's completions")

    # -- normalise: the reference policy's completions get mean 0, std 1
    bare = accelerator.unwrap_model(model)
    if reference is None:
        reference = [(g.messages, c) for g in train_groups for c in g.completions]
    reference = list(reference)[: cfg.normalize_samples]
    ref_enc = [encode_reply(tokenizer, conv, c, cfg.max_length) for conv, c in reference]
    bare.eval()
    with torch.no_grad():
        raw = torch.cat(
            [
                scores_of(bare, ref_enc[i : i + cfg.eval_batch_size], pad_id, device)
                for i in range(0, len(ref_enc), cfg.eval_batch_size)
            ]
        )
    mean = float(raw.mean())
    std = float(raw.std()) if raw.numel() > 1 and float(raw.std()) > 1e-6 else 1.0
    setattr(bare.config, NORM_MEAN, mean)
    setattr(bare.config, NORM_STD, std)

    metrics = {
        "val_accuracy": val["val_accuracy"] if val["val_pairs"] else None,
        "val_loss": val["val_loss"] if val["val_pairs"] else None,
        "val_pairs": val["val_pairs"],
        "train_loss": history.get("train_loss"),
        "train_prompts": len(train_groups),
        "val_prompts": len(val_groups),
        "train_pairs": sum(g.n_pairs() for g in train_groups),
        "steps": total,
        "resumed_from_step": start,
        "seconds": round(seconds, 2),
        "pairs_per_second": round(seen_pairs * world / seconds, 2) if seconds > 0 else None,
        NORM_MEAN: mean,
        NORM_STD: std,
        "normalized_on": len(reference),
    }

    # -- save whole: a temporary folder renamed into place
    files = {"reward_config.json": asdict(cfg), "data_manifest.json": manifest or {}, "metrics.json": metrics}
    save_whole(out_dir, work_dir, accelerator=accelerator, model=bare, tokenizer=tokenizer, files=files)
    # No progress call from here on: it may raise JobCancelled, and the model is already whole.
    return TrainResult(path=out_dir, metrics=metrics, resumed_from_step=start, steps=total)
