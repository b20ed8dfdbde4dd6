"""Length buckets (trainer.batching): a batch cut into forward calls by length gives the same
reward scores, SFT loss and gradients as one call padded to the longest, and the cut is the
cheapest one."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.chat import from_text
from tests.tiny import tiny_reward_model, tiny_tokenizer
from trainer import batching, render
from trainer.batching import length_buckets
from trainer.reward.model import Group, collate, encode_reply, grouped_loss, plan_pairs, score
from trainer.reward.train import scores_of
from trainer.sft.loss import collate as sft_collate
from trainer.sft.loss import encode_example, forward_loss

WORDS = "the cat sat on a mat and dog ran under box bird flew away over red house".split()  # noqa: SIM905


def cost(lengths: list[int], groups: list[list[int]], call_cost: int) -> int:
    return sum(len(g) * max(lengths[i] for i in g) + call_cost for g in groups)


class TestLengthBuckets:
    def test_every_index_once_each_group_a_run_of_the_sorted_lengths(self) -> None:
        lengths = [5, 300, 40, 41, 7, 299, 120, 6]
        groups = length_buckets(lengths, call_cost=16)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(lengths)

    def test_the_cut_is_the_cheapest_of_all_cuts_of_the_sorted_order(self) -> None:
        lengths = [5, 300, 40, 41, 7, 299, 120, 6, 64, 65]
        ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
        for call_cost in (0, 16, 128, 10_000):
            got = cost(lengths, length_buckets(lengths, call_cost=call_cost), call_cost)
            best = min(
                cost(
                    lengths,
                    [ordered[a:b] for a, b in zip((0, *cuts), (*cuts, len(ordered)), strict=True)],
                    call_cost,
                )
                for r in range(len(ordered))
                for cuts in combinations(range(1, len(ordered)), r)
            )
            assert got == best

    def test_a_dear_call_keeps_one_padded_batch_and_a_free_one_splits_by_length(self) -> None:
        lengths = [10, 200, 10, 200]
        assert len(length_buckets(lengths, call_cost=10**6)) == 1
        assert sorted(map(sorted, length_buckets(lengths, call_cost=0))) == [[0, 2], [1, 3]]
        assert length_buckets([]) == []


def test_reward_scores_and_gradients_match_one_padded_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "CALL_COST_TOKENS", 0)  # tiny sequences: cut as if calls were free
    torch.manual_seed(0)
    tok = tiny_tokenizer([" ".join(WORDS)], padding_side="right")
    model = tiny_reward_model(tok, seed=0, hidden=32, layers=2, heads=2).train()
    groups = [
        Group(from_text(" ".join(WORDS[: 2 + i])), (" ".join(WORDS[: 1 + 5 * i]), "the cat"), ((1, 2),))
        for i in range(6)
    ]
    enc = [encode_reply(tok, g.messages, c, 64) for g in groups for c in g.completions]
    lengths = [len(e.input_ids) for e in enc]
    assert len(length_buckets(lengths)) > 1
    plan = plan_pairs(groups)

    def scores_and_grads(bucketed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        if bucketed:
            s = scores_of(model, enc, render.pad_id(tok), torch.device("cpu"))
        else:
            s = score(model, collate(enc, render.pad_id(tok))).float()
        grouped_loss(s, plan).backward()
        return s.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    padded, padded_grads = scores_and_grads(False)
    bucketed, bucketed_grads = scores_and_grads(True)
    assert torch.allclose(bucketed, padded, atol=1e-5)
    assert len(bucketed_grads) == len(padded_grads)
    for a, b in zip(bucketed_grads, padded_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_sft_loss_summed_over_buckets_is_the_padded_batchs(tiny_chat_model_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_path, dtype=torch.float32).eval()
    examples = [
        encode_example(tok, from_text(" ".join(WORDS[: 1 + 3 * i])), " ".join(WORDS[: 2 + i]), 256)
        for i in range(6)
    ]
    pad = render.pad_id(tok)
    with torch.no_grad():
        whole, n_whole = forward_loss(model, sft_collate(examples, pad))
        parts = [
            forward_loss(model, sft_collate([examples[i] for i in b], pad))
            for b in length_buckets([len(e.input_ids) for e in examples], call_cost=0)
        ]
    assert len(parts) > 1
    assert sum(n for _, n in parts) == n_whole
    assert float(sum(loss for loss, _ in parts)) == pytest.approx(float(whole), rel=1e-5)
