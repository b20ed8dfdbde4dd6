"""One (conversation, reply), every path that gives it to a model: the same token ids.

Issue 14's renderer promise, held on the tiny chat model (ChatML, EOS and end-of-turn apart):
reward-model training, reward scoring (score_replies), `ranklab reward eval`'s path (a TRL
conversational file and an HH dialogue read by trainer/reward/files.py), a PPO rollout (its
query and the episode's ids) and PPO's reward-model scoring of it, and the upload's token count
(app/prompts/tokens.py) all give what trainer.render gives: reply_ids for scoring and learning,
prompt_ids for what the model continues.

Sampling's LocalBackend (trainer/sampling/backends.py) is held here too: the batch it generates
from is render.prompt_ids, and it stops at the same stop set PPO does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app.chat import Conversation
from app.prompts.tokens import conversation_counter
from tests.trainer.ppo_fixtures import one_iteration, one_thread, train_in
from tests.trainer.test_render import CONV, REPLY
from trainer import render
from trainer.ppo import rollout as ro
from trainer.reward import model as rm
from trainer.reward.data import group_from_row
from trainer.reward.eval import evaluate_file, evaluate_groups
from trainer.reward.files import read_preference_groups
from trainer.reward.train import encode_groups

OTHER = "I do not know."
MAX = 256  # room for the whole conversation: nothing is cut


class Spy(torch.nn.Module):
    """The reward model, keeping the real (unpadded) ids of every row it reads. `module` is the
    name DDP uses, so trainer.reward.model.score finds the head on the inner model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model
        self.seen: list[list[int]] = []

    @property
    def config(self) -> Any:
        return self.module.config

    def forward(self, **kw: Any) -> Any:
        for row, mask in zip(kw["input_ids"], kw["attention_mask"], strict=True):
            self.seen.append(row[mask > 0].tolist())
        return self.module(**kw)


@pytest.fixture(scope="module")
def reward(tiny_chat_model_path: Path) -> tuple[Any, Any]:
    return rm.load_reward_model(str(tiny_chat_model_path))


@pytest.fixture(scope="module")
def tok(tiny_chat_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model_path)


@pytest.fixture(scope="module")
def want(tok: Any) -> list[int]:
    ids = render.reply_ids(tok, CONV, REPLY).input_ids
    # The template's own markers are there: the paths below cannot agree on a plain rendering.
    assert tok.convert_tokens_to_ids("<|im_end|>") == ids[-1] != tok.eos_token_id
    assert ids[: len(render.prompt_ids(tok, CONV))] == render.prompt_ids(tok, CONV)
    return ids


def test_reward_training_encodes_the_rendered_reply(reward: tuple[Any, Any], want: list[int]) -> None:
    _, tok = reward
    # A groups export row with the conversation, as train_reward reads it (trainer/reward/data.py).
    row = {"prompt": "ignored when messages are given", "messages": CONV, "completions": [REPLY, OTHER]}
    group = group_from_row({**row, "rankings": [[1, 2]]})
    assert group.messages == CONV
    assert encode_groups(tok, [group], MAX)[0][0].input_ids == want


def test_reward_scoring_reads_the_rendered_reply(reward: tuple[Any, Any], want: list[int]) -> None:
    model, tok = reward
    spy = Spy(model)
    scores = rm.score_replies(spy, tok, [CONV], [REPLY], max_length=MAX, normalized=False)
    assert spy.seen == [want] and len(scores) == 1


def test_reward_eval_reads_a_conversational_file_as_rendered(
    reward: tuple[Any, Any], want: list[int], tmp_path: Path
) -> None:
    """`ranklab reward eval`: a TRL conversational file (the system message kept) and an HH
    dialogue (its turns, no system message) through files.py and the evaluation's scoring."""
    model, tok = reward
    trl = tmp_path / "trl.jsonl"
    trl.write_text(
        json.dumps(
            {
                "prompt": CONV,
                "chosen": [{"role": "assistant", "content": REPLY}],
                "rejected": [{"role": "assistant", "content": OTHER}],
            }
        )
        + "\n"
    )
    groups, skipped = read_preference_groups(trl)
    assert skipped == 0 and [g.messages for g in groups] == [CONV]
    spy = Spy(model)
    correct, pairs = evaluate_groups(spy, tok, groups, max_length=MAX, batch_size=8)
    assert pairs == 1 and spy.seen[0] == want
    assert spy.seen[1] == render.reply_ids(tok, CONV, OTHER).input_ids

    hh = tmp_path / "hh.jsonl"
    dialogue = "\n\nHuman: Name a tea.\n\nAssistant: Green tea.\n\nHuman: Another one?\n\nAssistant:"
    hh.write_text(json.dumps({"chosen": f"{dialogue} {REPLY}", "rejected": f"{dialogue} {OTHER}"}) + "\n")
    (group,), _ = read_preference_groups(hh)
    assert group.messages == CONV[1:]
    spy.seen.clear()
    evaluate_groups(spy, tok, [group], max_length=MAX, batch_size=8)
    assert spy.seen[0] == render.reply_ids(tok, CONV[1:], REPLY).input_ids


def test_reward_eval_command_runs_on_the_chat_model(tiny_chat_model_path: Path, tmp_path: Path) -> None:
    trl = tmp_path / "trl.jsonl"
    row = {
        "prompt": CONV,
        "chosen": [{"role": "assistant", "content": REPLY}],
        "rejected": [{"role": "assistant", "content": OTHER}],
    }
    trl.write_text(json.dumps(row) + "\n" + json.dumps({**row, "prompt": CONV[:2]}) + "\n")
    correct, pairs, skipped = evaluate_file(str(tiny_chat_model_path), trl, max_length=MAX, batch_size=4)
    assert (pairs, skipped) == (2, 0) and correct in (0.0, 0.5, 1.0, 1.5, 2.0)


def test_a_ppo_rollout_is_the_rendered_prompt_and_its_reward_read_as_rendered(
    reward: tuple[Any, Any], tok: Any, want: list[int]
) -> None:
    """The rollout's query is render.prompt_ids; an episode whose response is the reply's tokens
    is render.reply_ids whole; the reward model reads (conversation, decoded reply) as trained."""
    short: Conversation = [{"role": "user", "content": "Hi."}]
    prompt = render.prompt_ids(tok, CONV)
    query, qmask = ro.query_batch(tok, [CONV, short], MAX)
    assert query[0][qmask[0] > 0].tolist() == prompt
    assert query[1][qmask[1] > 0].tolist() == render.prompt_ids(tok, short)
    assert qmask[1].tolist()[0] == 0  # left padded

    reply_tokens = want[len(prompt) :]  # through <|im_end|>, which is a stop token
    assert reply_tokens[-1] in render.stop_token_ids(tok)
    pad = render.pad_id(tok)
    response = torch.tensor([reply_tokens + [pad, pad], reply_tokens + [pad, pad]])
    batch = ro.Rollout(
        query=query,
        query_mask=qmask,
        response=response,
        response_mask=torch.tensor([[1.0] * len(reply_tokens) + [0.0, 0.0]] * 2),
        convs=[CONV, short],
    )
    episode = batch.input_ids[0][batch.attention_mask[0] > 0].tolist()
    assert episode == want

    model, rm_tok = reward
    spy = Spy(model)
    ro.RewardModelScorer(spy, rm_tok, tok, max_length=MAX)(batch)
    assert spy.seen == [want, render.reply_ids(rm_tok, short, REPLY).input_ids]


def test_sampling_generates_from_the_rendered_prompt_and_stops_as_ppo_does(
    tiny_chat_model_path: Path, tok: Any
) -> None:
    from trainer.sampling.backends import LocalBackend, SamplingParams

    backend = LocalBackend(str(tiny_chat_model_path), device="cpu")
    seen: list[list[int]] = []
    real = backend.generate_batch

    def generate_batch(batch, **kw):  # type: ignore[no-untyped-def]
        seen.extend(
            row[m > 0].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        )
        return real(batch, **kw)

    backend.generate_batch = generate_batch  # type: ignore[method-assign]
    with one_thread():
        out = backend.generate([CONV], n=2, params=SamplingParams(max_new_tokens=4), seed=0)
    assert seen == [render.prompt_ids(tok, CONV)] and len(out[0]) == 2
    assert backend.stops == render.stop_token_ids(tok)


def test_the_upload_counts_the_rendered_prompt(tiny_chat_model_path: Path, tok: Any) -> None:
    count = conversation_counter(tiny_chat_model_path)
    assert count is not None
    assert count(CONV) == len(render.prompt_ids(tok, CONV))


@pytest.mark.slow
def test_ppo_runs_on_the_chat_model_through_the_renderer(
    tiny_chat_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop itself: its queries are render.prompt_ids, it stops at <|im_end|> as at EOS, and
    its reward model reads each (conversation, reply) through encode_reply."""
    from transformers import AutoTokenizer

    queries: list[list[int]] = []
    scored: list[tuple[Conversation, str]] = []
    real_query, real_encode = ro.query_batch, rm.encode_reply

    def query_batch(tokenizer, convs, max_prompt_tokens, device="cpu"):  # type: ignore[no-untyped-def]
        ids, mask = real_query(tokenizer, convs, max_prompt_tokens, device)
        queries.extend(row[m > 0].tolist() for row, m in zip(ids, mask, strict=True))
        return ids, mask

    def encode_reply(tokenizer, conv, reply, max_length):  # type: ignore[no-untyped-def]
        scored.append((conv, reply))
        return real_encode(tokenizer, conv, reply, max_length)

    monkeypatch.setattr(ro, "query_batch", query_batch)
    monkeypatch.setattr(rm, "encode_reply", encode_reply)
    cfg = one_iteration(4, max_new_tokens=6, sample_every=4)
    summary = train_in(tmp_path, cfg, tiny_chat_model_path, tiny_chat_model_path, [CONV, CONV[:2]])
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_path)
    prompts = {tuple(render.prompt_ids(tok, c)) for c in (CONV, CONV[:2])}
    assert len(queries) == 4 and {tuple(q) for q in queries} <= prompts
    assert len(scored) == 4 and all(conv in (CONV, CONV[:2]) for conv, _ in scored)
    assert summary.iterations == 1 and (tmp_path / "out" / "config.json").is_file()
