"""The reward model, pure: its K-way ranking loss, where its score is read, and how it is loaded.

InstructGPT (§3.5, App. C.2): all C(K,2) comparisons of one ranking go in one batch element,
one forward pass per completion (K passes, not K(K-1)); the loss is
    -1/C(K,2) · Σ log σ(r(x, y_w) − r(x, y_l))
per ranking, then averaged over rankings. Tied pairs are dropped. The score is read at the last
real token of the rendered conversation + reply (trainer.render: the model's chat template, so
that token is the reply's end-of-turn token); the scalar head starts at N(0, 1/√(d+1)) with bias
0, and dropout is off. No training loop here (see trainer/reward/train.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.chat import Conversation, as_text
from app.ranking import ordered_pairs, pair_indices
from trainer import render

# Config attributes that carry the score normalisation (saved in the model's config.json):
# normalised = (raw - reward_mean) / reward_std.
NORM_MEAN = "reward_mean"
NORM_STD = "reward_std"


@dataclass(frozen=True)
class Group:
    """One prompt conversation with its K completions (the assistant's replies to it) and every
    labeler's ranking of them.

    rankings[j][i] is labeler j's dense rank of completions[i] (1 = best, ties share a rank).
    Each ranking is its own term of the loss, over the same K forward passes.
    """

    messages: Conversation
    completions: tuple[str, ...]
    rankings: tuple[tuple[int, ...], ...]
    split: str = ""  # train/validation/test as the export gives it; "" = app.ranking.split_of(prompt)
    policies: tuple[str | None, ...] = ()  # name of the model version that sampled each completion
    task_id: int | None = None

    @property
    def prompt(self) -> str:
        """The conversation as readable text (app.chat.as_text, as Prompt.text stores it): the
        split's key and what logs show. Never model input."""
        return as_text(self.messages)

    @property
    def k(self) -> int:
        return len(self.completions)

    def n_pairs(self) -> int:
        return sum(ordered_pairs(r)[0] for r in self.rankings)


@dataclass
class PairPlan:
    """Where each comparison of a batch sits in the flat vector of its completions' scores."""

    win: Tensor  # (P,) index into the (N,) scores
    lose: Tensor  # (P,)
    ranking: Tensor  # (P,) which ranking (loss term) the pair belongs to
    n_rankings: int
    n_sequences: int  # N = Σ K over the batch's groups: the forward passes it needs
    offsets: list[int] = field(default_factory=list)  # first score index of each group

    def to(self, device: torch.device | str) -> PairPlan:
        return PairPlan(
            self.win.to(device),
            self.lose.to(device),
            self.ranking.to(device),
            self.n_rankings,
            self.n_sequences,
            self.offsets,
        )


def plan_pairs(groups: Sequence[Group]) -> PairPlan:
    """The comparisons of a batch of groups laid out on one flat score vector.

    Completions are numbered group by group (group g's completion i is offsets[g] + i).
    A ranking with every completion tied has no pairs and is no term of the loss.
    """
    win: list[int] = []
    lose: list[int] = []
    which: list[int] = []
    offsets: list[int] = []
    n_rankings = 0
    base = 0
    for g in groups:
        offsets.append(base)
        for ranks in g.rankings:
            if len(ranks) != g.k:
                raise ValueError(f"a ranking of {len(ranks)} ranks for {g.k} completions (task {g.task_id})")
            # app.ranking's expansion, the one every export runs: the loss sees exactly their pairs.
            pairs = pair_indices(ranks)
            if not pairs:
                continue
            for w, lo, _ in pairs:
                win.append(base + w)
                lose.append(base + lo)
                which.append(n_rankings)
            n_rankings += 1
        base += g.k
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return PairPlan(as_long(win), as_long(lose), as_long(which), n_rankings, base, offsets)


def grouped_loss(scores: Tensor, plan: PairPlan) -> Tensor:
    """Mean over rankings of each ranking's mean −log σ(r_w − r_l). scores: (N,)."""
    if plan.n_rankings == 0:
        return scores.sum() * 0.0  # keeps the graph (DDP wants every step to backpropagate)
    logp = F.logsigmoid(scores[plan.win] - scores[plan.lose])  # (P,)
    sums = scores.new_zeros(plan.n_rankings).index_add(0, plan.ranking, logp)  # (R,)
    counts = scores.new_zeros(plan.n_rankings).index_add(0, plan.ranking, torch.ones_like(logp))  # (R,)
    return -(sums / counts).mean()


def pair_correct(scores: Tensor, plan: PairPlan) -> tuple[float, int]:
    """Comparisons the scores order as the labeler did (an exact score tie counts half), and P."""
    if plan.win.numel() == 0:
        return 0.0, 0
    diff = scores[plan.win] - scores[plan.lose]
    right = (diff > 0).float() + 0.5 * (diff == 0).float()
    return float(right.sum()), int(plan.win.numel())


# --- encoding -----------------------------------------------------------------------------


@dataclass
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None = None


def encode_reply(tokenizer: Any, conv: Conversation, reply: str, max_length: int) -> Encoded:
    """The conversation and the reply as the reward model reads them, in at most max_length tokens:
    trainer.render's reply_ids (the chat template; the reply through its end-of-turn token, where
    a decoder's score is read), the prompt cut from the left by render.fit. Training, scoring,
    `ranklab reward eval`, the normalisation and PPO's scoring of rollouts all encode here.

    An encoder (a tokenizer with a separator token, e.g. MiniLM) pools at its own [CLS], so the
    rendered ids are wrapped in its special tokens, inside the same max_length.
    """
    extra = tokenizer.num_special_tokens_to_add(pair=False) if tokenizer.sep_token is not None else 0
    fitted = render.fit(render.reply_ids(tokenizer, conv, reply), max(1, max_length - extra))
    if not extra:
        return Encoded(fitted.input_ids)
    return Encoded(with_special_tokens(tokenizer, fitted.input_ids))


def with_special_tokens(tokenizer: Any, ids: list[int]) -> list[int]:
    """One sequence wrapped as the encoder's tokenizer wraps it: [CLS] ids [SEP] (BERT, MiniLM),
    <s> ids </s> (RoBERTa). transformers 5 tokenizers no longer have
    build_inputs_with_special_tokens; their single-sequence template is cls, text, sep."""
    build = getattr(tokenizer, "build_inputs_with_special_tokens", None)  # transformers 4
    if build is not None:
        return list(build(ids))
    return [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]


def collate(encoded: Sequence[Encoded], pad_id: int, *, left: bool = False) -> dict[str, Tensor]:
    """Pad to the longest; right padding unless asked (the score reader handles both)."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (N, T)
    types = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = torch.tensor(e.input_ids)
        mask[row, cols] = 1
        if e.token_type_ids is not None:
            types[row, cols] = torch.tensor(e.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if any(e.token_type_ids is not None for e in encoded):
        batch["token_type_ids"] = types
    return batch


# --- the model ----------------------------------------------------------------------------


def is_decoder(model: nn.Module) -> bool:
    """Decoder *ForSequenceClassification models (GPT-2, Llama, Qwen, ...) name their head `score`."""
    return isinstance(getattr(model, "score", None), nn.Linear)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of the last real token of each row, under left or right padding. (B,)"""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (T,)
    return (positions * attention_mask.long()).argmax(-1)


def score(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Raw scalar rewards (B,) for a padded batch: the last real token (decoder) or the model's
    own pooling (encoder)."""
    core = getattr(model, "module", model)  # DDP wraps; the attributes live on the inner model
    if not is_decoder(core):
        return model(**batch).logits[:, 0]  # (B,)
    mask = batch["attention_mask"]
    # Position ids from the mask, so a left-padded row sees the same positions as a right-padded one.
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    # Through the (possibly DDP-wrapped) model's own forward, so gradient sync is set up; its
    # pooled logits find the "last non-pad token" by token id, which fails when pad == eos, so
    # the score is read here from the final hidden states at the mask's last position.
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids,
        output_hidden_states=True,
    )
    hidden = out.hidden_states[-1]  # (B, T, d), after the final norm
    last = last_token_index(mask)  # (B,)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
    head = cast(nn.Module, core.score)
    return head(pooled)[:, 0]  # (B,)


def normalize(raw: Tensor, config: Any) -> Tensor:
    """The score the policy is trained on: shifted and scaled by the stored reference statistics."""
    mean = float(getattr(config, NORM_MEAN, 0.0) or 0.0)
    std = float(getattr(config, NORM_STD, 1.0) or 1.0)
    return (raw - mean) / std


def zero_dropout(config: Any) -> None:
    """Dropout off, whatever the architecture calls it (resid_pdrop, hidden_dropout_prob, ...)."""
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in name or name.endswith("pdrop")):
            setattr(config, name, 0.0)


def init_head(linear: nn.Linear) -> None:
    """InstructGPT's head: weights N(0, 1/√(d+1)) (d = the head's input width), bias 0."""
    d = linear.in_features
    with torch.no_grad():
        linear.weight.normal_(0.0, 1.0 / math.sqrt(d + 1))
        if linear.bias is not None:
            linear.bias.zero_()


def score_head(model: nn.Module) -> nn.Linear:
    """The final one-output linear layer (GPT-2 `score`, BERT `classifier`, RoBERTa `out_proj`)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no one-output linear head")
    return heads[-1]


def load_reward_model(source: str, *, tokenizer_source: str | None = None) -> tuple[nn.Module, Any]:
    """A one-label AutoModelForSequenceClassification and its tokenizer, dropout off.

    From a policy or encoder backbone the head is new and gets InstructGPT's init; from a saved
    reward model it keeps its trained head and its normalisation.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source or source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config = AutoConfig.from_pretrained(source, num_labels=1)
    zero_dropout(config)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    model, info = AutoModelForSequenceClassification.from_pretrained(
        source, config=config, output_loading_info=True
    )
    head = score_head(model)
    head_names = {n for n, m in model.named_modules() if m is head}
    if any(k.rsplit(".", 1)[0] in head_names for k in info.get("missing_keys", [])):
        init_head(head)
    model.config.problem_type = "regression"
    return model, tokenizer


@torch.no_grad()
def score_replies(
    model: nn.Module,
    tokenizer: Any,
    convs: Sequence[Conversation],
    replies: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 32,
    normalized: bool = True,
    device: torch.device | str | None = None,
) -> list[float]:
    """Scores of (conversation, reply) pairs, in order (normalised with the stored statistics),
    each encoded by encode_reply with the reward model's own tokenizer."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    pad = render.pad_id(tokenizer)
    if len(convs) != len(replies):
        raise ValueError(f"{len(convs)} conversations for {len(replies)} replies")
    for start in range(0, len(convs), batch_size):
        enc = [
            encode_reply(tokenizer, conv, reply, max_length)
            for conv, reply in zip(
                convs[start : start + batch_size], replies[start : start + batch_size], strict=True
            )
        ]
        batch = {k: v.to(device) for k, v in collate(enc, pad).items()}
        raw = score(model, batch).float()
        out.extend((normalize(raw, model.config) if normalized else raw).tolist())
    model.train(was_training)
    return out
