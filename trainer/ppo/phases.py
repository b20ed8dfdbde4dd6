"""The three phases of a PPO iteration, in order: 1. generate (rollout), 2. score (old and
reference log-probs, values, reward-model scores, shaped rewards, GAE), 3. update (clipped PPO
on policy and value, plus γ·∇ LM loss on pretraining text, PPO-ptx)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from app.chat import Conversation
from trainer.ppo import losses as ppo
from trainer.ppo import rollout as ro
from trainer.ppo.config import PPOConfig
from trainer.ppo.rollout import Rollout
from trainer.ppo.setup import Run


@dataclass
class Scored:
    """A rollout's phase-2 tensors: (B, R) per token unless said."""

    mask: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    raw_scores: torch.Tensor  # (B,)
    scores: torch.Tensor  # (B,) after the penalty for a response that never stops
    finished: torch.Tensor  # (B,)
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def seeded(seed: int, *salt: int) -> torch.Generator:
    value = seed
    for s in salt:
        value = value * 1_000_003 + s
    return torch.Generator().manual_seed(value % (2**63))


def lm_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=ro.position_ids(mask))
    logits = out.logits[:, :-1, :].float()  # (B, T-1, V)
    target, tmask = ids[:, 1:], mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
    ).view_as(tmask)
    return ppo.masked_mean(nll, tmask)


def lm_loss_on(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens: int = 256,
    device: torch.device | str = "cpu",
) -> float:
    """Mean token LM loss of `model` on `texts` (the PPO-ptx regulariser's target; tests, metrics)."""
    ids, mask = tokenize_texts(tokenizer, texts, max_tokens, device)
    with torch.no_grad():
        return float(lm_loss(model, ids, mask))


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], max_tokens: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [
        (tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_tokens]
        for t in texts
    ]
    return ro.left_pad(seqs, tokenizer.pad_token_id, device)


def rollout(cfg: PPOConfig, run: Run, prompts: Sequence[Conversation], room: int, it: int) -> Rollout:
    """Phase 1: this process's share of prompts, rendered, and the policy's responses to them."""
    acc, device = run.acc, run.device
    pick = torch.randint(
        0, len(prompts), (run.per_process,), generator=seeded(cfg.seed, it, acc.process_index)
    ).tolist()
    convs = [prompts[i] for i in pick]
    query, query_mask = ro.query_batch(run.tokenizer, convs, room, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + it * 31 + acc.process_index)
    with acc.autocast():
        batch = ro.generate(
            acc.unwrap_model(run.policy),
            query,
            query_mask,
            max_new_tokens=cfg.max_new_tokens,
            stop_ids=run.stop_ids,
            pad_id=run.pad_id,
            temperature=cfg.temperature,
            generator=gen,
            convs=convs,
        )
    sync(device)
    return batch


def score(cfg: PPOConfig, run: Run, batch: Rollout) -> Scored:
    """Phase 2: old and reference log-probs, values, reward-model scores, shaped rewards, GAE."""
    mask = batch.response_mask  # (B, R)
    with torch.no_grad(), run.acc.autocast():
        old_logprobs, _ = ro.policy_forward(run.policy, batch, cfg.temperature)
        ref_logprobs, _ = ro.policy_forward(run.reference, batch, cfg.temperature)
        old_values = ro.value_forward(run.value, batch) * mask
        raw_scores = run.scorer(batch).float()  # (B,)
    finished = ppo.has_stop(batch.response, mask, run.stop_ids)
    scores = ppo.apply_missing_eos_penalty(raw_scores, finished, cfg.missing_eos_penalty)
    old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
    rewards, kl = ppo.shape_rewards(old_logprobs, ref_logprobs, scores, mask, run.kl_ctl.beta)
    advantages, returns = ppo.gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
    advantages = ppo.masked_whiten(advantages, mask)
    sync(run.device)
    return Scored(mask, old_logprobs, old_values, raw_scores, scores, finished, kl, advantages, returns)


UPDATE_STATS = (
    "policy_loss",
    "value_loss",
    "clip_frac",
    "value_clip_frac",
    "approx_kl",
    "entropy",
    "ptx_loss",
)


def update(
    cfg: PPOConfig,
    run: Run,
    batch: Rollout,
    s: Scored,
    it: int,
    ptx: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, list[float]]:
    """Phase 3: clipped PPO on policy and value over minibatches, plus γ·∇ LM loss (PPO-ptx)."""
    acc, device = run.acc, run.device
    stats: dict[str, list[float]] = {k: [] for k in UPDATE_STATS}
    order_gen = seeded(cfg.seed, it, 99, acc.process_index)
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(run.per_process, generator=order_gen).tolist()
        for start in range(0, run.per_process, run.mini):
            idx = torch.tensor(order[start : start + run.mini], device=device)
            m = s.mask[idx]
            mb = Rollout(
                query=batch.query[idx],
                query_mask=batch.query_mask[idx],
                response=batch.response[idx],
                response_mask=m,
            )
            with acc.autocast():
                new_logprobs, logits = ro.policy_forward(run.policy, mb, cfg.temperature)
                pl = ppo.policy_loss(new_logprobs, s.old_logprobs[idx], s.advantages[idx], m, cfg.clip_ratio)
                new_values = ro.value_forward(run.value, mb)
                vl, vclip = ppo.value_loss(new_values, s.old_values[idx], s.returns[idx], m, cfg.clip_value)
            run.opt_p.zero_grad(set_to_none=True)
            run.opt_v.zero_grad(set_to_none=True)
            acc.backward(pl.loss + vl)  # separate networks: each gets only its own loss's gradient
            if ptx is not None:
                # PPO-ptx: γ·∇(LM loss) lands in the same gradient buffers before the step.
                rows = torch.randint(0, ptx[0].shape[0], (cfg.ptx_batch_size,), generator=order_gen)
                ids, pmask = ptx[0][rows].to(device), ptx[1][rows].to(device)
                keep = pmask.sum(0) > 0  # drop columns that are padding in every row
                with acc.autocast():
                    lm = lm_loss(run.policy, ids[:, keep], pmask[:, keep])
                acc.backward(cfg.ptx_coef * lm)
                stats["ptx_loss"].append(float(lm.detach()))
            acc.clip_grad_norm_(run.policy.parameters(), cfg.max_grad_norm)
            acc.clip_grad_norm_(run.value.parameters(), cfg.max_grad_norm)
            run.opt_p.step()
            run.opt_v.step()
            with torch.no_grad():
                ent = ppo.masked_mean(ppo.entropy_from_logits(logits, cfg.temperature), m)
            losses = (
                pl.loss,
                vl,
                pl.clip_frac,
                vclip,
                pl.approx_kl,
                ent,
            )  # UPDATE_STATS' order, less ptx_loss
            for name, v in zip(UPDATE_STATS[:-1], losses, strict=True):
                stats[name].append(float(v.detach()))
    sync(device)
    return stats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
