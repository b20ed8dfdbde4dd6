"""Rollouts for PPO: batched sampling from the policy, and the forward passes that score them.

Prompts are conversations, rendered by trainer.render (the policy's chat template, generation
prompt added) and left-padded by render.generation_batch (every prompt ends at the same column,
so new tokens line up). Sampling draws from softmax(logits / temperature), with no top-k or
top-p: the log-probabilities PPO uses must be those of the distribution that actually drew the
tokens. It stops at render.stop_token_ids (EOS and the template's end-of-turn token, the set
sampling stops at). Every forward pass builds position ids from the attention mask, so left
padding does not shift positions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.chat import Conversation
from trainer import render
from trainer.ppo import losses as ppo


@dataclass
class Rollout:
    """One batch of prompts and the responses sampled for them."""

    query: torch.Tensor  # (B, P) left-padded prompt ids
    query_mask: torch.Tensor  # (B, P) 1 on prompt tokens
    response: torch.Tensor  # (B, R) sampled ids, pad after the first stop token
    response_mask: torch.Tensor  # (B, R) 1.0 up to and including the first stop token
    convs: list[Conversation] = field(default_factory=list)  # the B prompts (the reward model reads them)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)  # (B, P + R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask.to(self.response_mask.dtype), self.response_mask], dim=1)


def left_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, mask), both (B, max_len), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def query_batch(
    tokenizer: Any, convs: Sequence[Conversation], max_prompt_tokens: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as the policy continues them: render.generation_batch (chat template with
    the generation prompt, each cut from the left to max_prompt_tokens, left-padded).
    -> (ids, mask), both (B, P)"""
    batch = render.generation_batch(tokenizer, convs, max_length=max_prompt_tokens)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens; padding gets 0 (it is masked anyway).  (B, T) -> (B, T)"""
    return (torch.cumsum(mask.long(), dim=1) - 1).clamp(min=0)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    convs: Sequence[Conversation] = (),
) -> Rollout:
    """Sample until every row has emitted a stop token or `max_new_tokens` are drawn (KV cache,
    one token a step). `convs`, the prompts the query renders, ride along for the scorer."""
    B = query.shape[0]
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=query.device)
    mask = query_mask.long()
    out = model(input_ids=query, attention_mask=mask, position_ids=position_ids(mask), use_cache=True)
    next_pos = mask.sum(dim=1, keepdim=True)  # (B, 1) position of the first new token
    done = torch.zeros(B, dtype=torch.bool, device=query.device)
    tokens: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float() / temperature  # (B, V)
        probs = torch.softmax(logits, dim=-1)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        done = done | torch.isin(tok, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        next_pos = next_pos + 1
    response = torch.stack(tokens, dim=1)  # (B, R)
    response_mask = ppo.mask_after_stop(response, stop_ids)
    response = torch.where(response_mask > 0, response, torch.full_like(response, pad_id))
    return Rollout(
        query=query, query_mask=query_mask, response=response, response_mask=response_mask, convs=list(convs)
    )


def policy_forward(
    model: torch.nn.Module, rollout: Rollout, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the sampled response tokens and the logits that gave them.

    Returns (logprobs (B, R), logits (B, R, V)); the logit at position p predicts token p + 1.
    """
    mask = rollout.attention_mask.long()
    out = model(input_ids=rollout.input_ids, attention_mask=mask, position_ids=position_ids(mask))
    P = rollout.query.shape[1]
    logits = out.logits[:, P - 1 : -1, :]  # (B, R, V)
    return ppo.logprobs_from_logits(logits, rollout.response, temperature), logits


def token_values(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head of a sequence-classification model at every position.  -> (B, T)

    AutoModelForSequenceClassification pools at the last non-pad token; PPO needs the head at
    every token (the value network) or at a chosen one (the reward), so run backbone and head
    apart, as the reference implementations do.
    """
    backbone = getattr(model, model.base_model_prefix)
    mask = attention_mask.long()
    hidden = backbone(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask)
    ).last_hidden_state  # (B, T, H)
    return model.score(hidden).squeeze(-1).float()  # (B, T)


class TokenValueModel(torch.nn.Module):
    """A sequence-classification model whose forward gives the head at every token.

    Wrapping it (rather than reaching into a wrapped model's backbone) keeps DDP's gradient
    hooks in the forward pass under `accelerate launch`.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return token_values(self.model, input_ids, attention_mask)


def value_forward(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """V(state before each response token): the head at the token before it.  -> (B, R)

    `model` is a TokenValueModel (or anything called the same way)."""
    P = rollout.query.shape[1]
    return model(rollout.input_ids, rollout.attention_mask)[:, P - 1 : -1]


# Where the reward trainer may store the normalisation besides the model config.
NORMALIZATION_FILE = "reward_normalization.json"  # {"shift": float, "scale": float}


def reply_texts(tokenizer: Any, batch: Rollout, stop_ids: Sequence[int]) -> list[str]:
    """Each response as stored text (render.strip_special), its stop token and after dropped:
    what sampling would have stored as the completion."""
    out = []
    for row, m in zip(batch.response.tolist(), batch.response_mask.tolist(), strict=True):
        ids = row[: int(sum(m))]
        end = render.first_stop(ids, stop_ids)
        out.append(render.strip_special(tokenizer, ids if end is None else ids[:end]))
    return out


class RewardModelScorer:
    """A trained reward model reading each (conversation, response) as it learned them.

    The response is decoded with the policy's tokenizer and rendered with the reward model's own
    (render.reply_ids through trainer.reward.model.score_replies: the tokenizers may differ), so
    the score is read at the reply's end-of-turn token exactly as in training and
    `ranklab reward eval`; then normalised as its trainer stored.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        policy_tokenizer: Any,
        *,
        shift: float = 0.0,
        scale: float = 1.0,
        max_length: int = 512,
    ) -> None:
        self.model, self.tokenizer, self.policy_tokenizer = model, tokenizer, policy_tokenizer
        self.shift, self.scale, self.max_length = shift, scale, max_length
        self.stop_ids = render.stop_token_ids(policy_tokenizer)

    def __call__(self, batch: Rollout) -> torch.Tensor:
        from trainer.reward.model import score_replies

        if len(batch.convs) != batch.response.shape[0]:
            raise ValueError("the rollout carries no conversations: the reward model reads them")
        raw = score_replies(
            self.model,
            self.tokenizer,
            batch.convs,
            reply_texts(self.policy_tokenizer, batch, self.stop_ids),
            max_length=self.max_length,
            batch_size=len(batch.convs),
            normalized=False,
        )
        return (torch.tensor(raw, device=batch.response.device) - self.shift) / self.scale


def read_normalization(reward_path: str | Path, config: Any = None) -> tuple[float, float]:
    """(shift, scale): score_normalised = (raw − shift) / scale; (0, 1) when none was stored.

    The reward trainer keeps them in the model's config (reward_mean, reward_std); a
    reward_normalization.json beside it ({"shift", "scale"}) wins when present.
    """
    from trainer.reward.model import NORM_MEAN, NORM_STD

    path = Path(reward_path) / NORMALIZATION_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        shift, scale = float(data.get("shift", 0.0)), float(data.get("scale") or 1.0)
    else:
        shift = float(getattr(config, NORM_MEAN, 0.0) or 0.0)
        scale = float(getattr(config, NORM_STD, 1.0) or 1.0)
    return shift, scale if scale > 0 else 1.0
