"""PPO for RLHF, the pure math: no models, no loops, no I/O.

Follows InstructGPT App. C.4 and "The N implementation details of RLHF with PPO" (Huang et al.):
per-token KL penalty plus the reward-model score at the last real token, GAE, advantages
whitened over real tokens only, clipped policy ratio, clipped value loss.

Shapes: B = responses in the batch, T = response tokens. `mask` is 1.0 on real response tokens
(everything up to and including the first stop token) and 0.0 after it. The stop tokens are
trainer.render.stop_token_ids: EOS and the chat template's end-of-turn token(s), the set
sampling stops at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# --- masks and masked statistics ---------------------------------------------------------------


def _is_stop(tokens: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    return torch.isin(tokens, torch.tensor(list(stop_ids), dtype=tokens.dtype, device=tokens.device))


def mask_after_stop(tokens: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """1.0 up to and including the first stop token of each row, 0.0 after it.  (B, T) -> (B, T)"""
    is_stop = _is_stop(tokens, stop_ids).long()
    # Count of stops strictly before each position: > 0 means we are past the end.
    before = torch.cumsum(is_stop, dim=1) - is_stop
    return (before == 0).float()


def has_stop(tokens: torch.Tensor, mask: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """True for rows whose real part ends with a stop token (the response finished).  (B,)"""
    return (_is_stop(tokens, stop_ids) & (mask > 0)).any(dim=1)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a 0/1 mask (left or right padding alike).  (B,)"""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens only; padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


# --- log-probabilities and entropy ---------------------------------------------------------------


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(token) under the sampling distribution, i.e. of logits / temperature.  (B,T,V),(B,T) -> (B,T)"""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position.  (B, T, V) -> (B, T)"""
    scaled = logits.float() / temperature
    logp = F.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


# --- rewards -------------------------------------------------------------------------------------


def apply_missing_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """A response that never emitted a stop token loses `penalty` from its score (the model must
    learn to stop)."""
    return torch.where(finished, scores, scores - penalty)


def shape_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: −β·(log π − log π_ref) on every real token, plus the score on the last one.

    Returns (rewards, kl), both (B, T) and zero on padding.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = last_index(mask).clamp(min=0)  # (B,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    # A row with no real token at all gets no score (cannot happen after generation, but be safe).
    has_any = (mask.sum(dim=1) > 0).to(scores.dtype)
    rewards[rows, last] += scores * has_any
    return rewards, kl


# --- advantages ----------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.  (B, T) x3 -> (B, T), (B, T)

    Positions after the end carry zero value and reward, so the episode ends at the last real
    token (V after it is 0). Returns (advantages, returns = advantages + values), zero on padding.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    last_adv = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_adv = delta + gamma * lam * last_adv
        advantages_reversed.append(last_adv)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


# --- losses --------------------------------------------------------------------------------------


@dataclass
class PolicyLossOut:
    loss: torch.Tensor
    clip_frac: torch.Tensor
    approx_kl: torch.Tensor


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> PolicyLossOut:
    """Clipped surrogate objective (negated, to minimise), averaged over real tokens."""
    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return PolicyLossOut(loss=loss, clip_frac=clip_frac, approx_kl=approx_kl)


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: the worse of the plain and the clipped squared error.  -> (loss, clip_frac)"""
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip, clip)
    plain = (new_values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(plain, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > plain).float(), mask)
    return loss, clip_frac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) over real tokens: 1 is perfect, ≤ 0 is useless."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


# --- the KL coefficient ----------------------------------------------------------------------------


class FixedKLController:
    """β stays what it was set to (InstructGPT: 0.02)."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002
        return None

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """Ziegler et al. (2019): move β so the KL to the reference approaches `target`.

    β ← β · (1 + clip(KL/target − 1, −0.2, 0.2) · n_steps / horizon)
    """

    def __init__(self, beta: float, target: float, horizon: float) -> None:
        self.beta = beta
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.beta *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


def kl_controller(
    beta: float, target: float | None, horizon: float
) -> FixedKLController | AdaptiveKLController:
    if target is None:
        return FixedKLController(beta)
    return AdaptiveKLController(beta, target, horizon)
