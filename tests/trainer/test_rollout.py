"""Rollouts on a tiny policy: left padding with position ids from the mask, the sampler's own
distribution reused for the log-probabilities, masking after the first stop token, the reward
model reading (conversation, reply) as render.reply_ids gives it, with its normalisation, and
how the PPO loop sets up its four networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.chat import from_text
from tests.tiny import tiny_policy, tiny_reward_model, tiny_tokenizer
from tests.trainer.ppo_fixtures import (
    PROMPTS,
    MarkerScorer,
    make_models,
    one_iteration,
    train_in,
)
from trainer import render
from trainer.ppo import rollout as ro
from trainer.reward.model import Encoded, collate, score, score_head

TEXT = "the cat sat on a mat and dog ran"


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tiny_tokenizer([TEXT])


class Recorder(torch.nn.Module):
    """The policy, keeping the next-token logits the sampler saw at each step."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, **kw):  # type: ignore[no-untyped-def]
        out = self.model(**kw)
        self.seen.append(out.logits[:, -1].detach().clone())
        return out


def _rollout(tok, model, temperature: float = 0.7, max_new: int = 6):  # type: ignore[no-untyped-def]
    prompts = [tok("the cat sat on a mat")["input_ids"], tok("dog")["input_ids"], tok("a mat")["input_ids"]]
    query, qmask = ro.left_pad(prompts, tok.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    return prompts, ro.generate(
        model,
        query,
        qmask,
        max_new_tokens=max_new,
        stop_ids=[tok.eos_token_id],
        pad_id=tok.pad_token_id,
        temperature=temperature,
        generator=gen,
    )


def test_left_padded_generation_and_scoring_see_the_positions_of_an_unpadded_prompt(tok) -> None:  # type: ignore[no-untyped-def]
    policy = tiny_policy(tok).double()
    rec = Recorder(policy)
    prompts, batch = _rollout(tok, rec)
    assert batch.query_mask[1].tolist()[:4] == [0, 0, 0, 0]  # left padding
    logp, logits = ro.policy_forward(policy, batch, 0.7)
    real = batch.response_mask > 0
    # The KV-cached sampler saw the logits the scoring pass recomputes (same positions).
    steps = torch.stack(rec.seen[: batch.response.shape[1]], dim=1)
    assert torch.allclose(steps[real], logits[real], atol=1e-10)
    # And each row alone, unpadded, gives the same log-probabilities (temperature included).
    for i, p in enumerate(prompts):
        n = int(batch.response_mask[i].sum())
        alone = ro.Rollout(
            torch.tensor([p]),
            torch.ones(1, len(p), dtype=torch.long),
            batch.response[i : i + 1, :n],
            batch.response_mask[i : i + 1, :n],
        )
        want, _ = ro.policy_forward(policy, alone, 0.7)
        assert torch.allclose(want[0], logp[i, :n], atol=1e-6)
        full = torch.log_softmax(logits[i, :n].float() / 0.7, dim=-1)
        assert torch.allclose(full.gather(1, batch.response[i, :n, None])[:, 0], logp[i, :n], atol=1e-6)


def test_everything_after_eos_is_padding_and_masked(tok) -> None:  # type: ignore[no-untyped-def]
    policy = tiny_policy(tok)
    with torch.no_grad():  # make EOS the likeliest token, so some rows end early
        policy.lm_head.weight[tok.eos_token_id] += 0.3 * policy.lm_head.weight.norm(dim=1).max()
    _, batch = _rollout(tok, policy, temperature=1.0, max_new=12)
    eos = tok.eos_token_id
    for row, m in zip(batch.response.tolist(), batch.response_mask.tolist(), strict=True):
        n = int(sum(m))
        assert m == [1.0] * n + [0.0] * (len(m) - n)
        assert eos not in row[: n - 1] and all(t == tok.pad_token_id for t in row[n:])
    assert bool((batch.response == eos).any()) and batch.response.shape[1] <= 12


def test_stops_at_any_stop_token_and_masks_after_it(tok) -> None:  # type: ignore[no-untyped-def]
    """A second stop token (an end-of-turn token) ends a response as EOS does: the same draws,
    cut at its first occurrence, padded and masked after it."""
    policy = tiny_policy(tok)
    query, qmask = ro.left_pad([tok("the cat sat")["input_ids"], tok("dog")["input_ids"]], tok.pad_token_id)

    def sample(stops: list[int]) -> ro.Rollout:
        return ro.generate(
            policy,
            query,
            qmask,
            max_new_tokens=12,
            stop_ids=stops,
            pad_id=tok.pad_token_id,
            generator=torch.Generator().manual_seed(0),
        )

    eos = tok.eos_token_id
    free = sample([eos])
    first = free.response[0, : int(free.response_mask[0].sum())].tolist()
    other = next(t for t in first[1:] if t != eos)  # a token row 0 draws, not first
    cut = sample([eos, other])
    row, n = cut.response[0].tolist(), int(cut.response_mask[0].sum())
    assert n == first.index(other) + 1 < len(first)
    assert row[:n] == first[:n] and all(t == tok.pad_token_id for t in row[n:])
    assert cut.response_mask[0].tolist() == [1.0] * n + [0.0] * (len(row) - n)


def test_reward_model_reads_the_rendered_conversation_and_reply_normalised(tok) -> None:  # type: ignore[no-untyped-def]
    rm = tiny_reward_model(tok, seed=3).double()
    convs = [from_text("the cat sat on a mat"), from_text("dog"), from_text("a mat")]
    query, qmask = ro.query_batch(tok, convs, 64)
    batch = ro.generate(
        tiny_policy(tok),
        query,
        qmask,
        max_new_tokens=6,
        stop_ids=render.stop_token_ids(tok),
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
        convs=convs,
    )
    got = ro.RewardModelScorer(rm, tok, tok, shift=0.5, scale=2.0, max_length=64)(batch)
    replies = ro.reply_texts(tok, batch, render.stop_token_ids(tok))
    assert any(replies)
    for i, conv in enumerate(convs):
        ids = render.reply_ids(tok, conv, replies[i]).input_ids  # ends with the reply's EOS
        assert ids[-1] == tok.eos_token_id
        alone = score(rm, collate([Encoded(ids)], tok.pad_token_id))[0]
        assert got[i].item() == pytest.approx((alone.item() - 0.5) / 2.0, abs=1e-6)


@pytest.mark.slow
def test_ppo_sets_up_frozen_reference_and_value_from_the_reward_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForSequenceClassification

    policy_path, reward_path = make_models(tmp_path / "models")
    rm_head = score_head(AutoModelForSequenceClassification.from_pretrained(reward_path)).weight.detach()
    calls: list[tuple[torch.nn.Module, float]] = []
    values: list[torch.Tensor] = []
    real_pf, real_vf = ro.policy_forward, ro.value_forward

    def policy_forward(model, batch, temperature=1.0):  # type: ignore[no-untyped-def]
        calls.append((model, temperature))
        return real_pf(model, batch, temperature)

    def value_forward(model, batch):  # type: ignore[no-untyped-def]
        inner = getattr(model, "module", model).model
        values.append(score_head(inner).weight.detach().clone())
        assert not any(m.p for m in inner.modules() if isinstance(m, torch.nn.Dropout))
        return real_vf(model, batch)

    monkeypatch.setattr(ro, "policy_forward", policy_forward)
    monkeypatch.setattr(ro, "value_forward", value_forward)
    cfg = one_iteration(4, max_new_tokens=3, temperature=0.8)
    train_in(tmp_path, cfg, policy_path, reward_path, PROMPTS, scorer=MarkerScorer(policy_path))
    (old, t_old), (ref, t_ref), (new, _) = calls[:3]
    assert t_old == t_ref == 0.8  # log-probabilities of logits / the sampling temperature
    assert ref is not old and new is old  # the reference is its own model, the policy trains
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert not old.training  # dropout off: eval mode, gradients still flow
    assert any(p.requires_grad for p in old.parameters())
    assert torch.equal(values[0], rm_head)  # the value network starts from the reward model


@pytest.mark.slow
def test_a_long_prompt_is_rendered_and_cut_from_the_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_path, reward_path = make_models(tmp_path / "models")
    seen: list[list[int]] = []
    real = ro.query_batch

    def query_batch(tokenizer, convs, max_prompt_tokens, device="cpu"):  # type: ignore[no-untyped-def]
        ids, mask = real(tokenizer, convs, max_prompt_tokens, device)
        seen.extend(row[m > 0].tolist() for row, m in zip(ids, mask, strict=True))
        return ids, mask

    monkeypatch.setattr(ro, "query_batch", query_batch)
    cfg = one_iteration(6, max_new_tokens=2, max_prompt_tokens=3)
    conv = from_text("the quick dog")
    train_in(
        tmp_path,
        cfg,
        policy_path,
        reward_path,
        [conv],
        scorer=lambda batch: torch.zeros(batch.query.shape[0]),
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_path)
    full = render.prompt_ids(tok, conv)
    assert len(full) > 3 and seen and all(s == full[-3:] for s in seen)  # "dog", "Assistant", ":"
