"""Sampling a chat model: the model input is trainer.render's, generation stops at the end of
the turn (<|im_end|>, not only EOS), no template token is stored, and an empty reply is sampled
again, or fails its prompt, never shown. On the tiny Llama chat model, taught to reply (see
`teach_replies` in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.chat import Conversation
from app.config import Settings
from app.labeling.models import Task
from app.prompts.models import Prompt
from tests.sampling.conftest import sample_in_one_run
from trainer import render
from trainer.models.tiny import IM_END, IM_START
from trainer.sampling import job as sampling
from trainer.sampling.backends import LocalBackend, Sample, SamplingParams

THREE_TURNS: Conversation = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Name a city in France."},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And one in Italy?"},
]
MAX_NEW = 12


class TestLocalBackendInput:
    def test_generate_gets_the_renderers_ids_left_padded_and_its_stop_set(
        self, tiny_chat_model_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backend = LocalBackend(str(tiny_chat_model_path), device="cpu")
        tok = backend.tokenizer
        seen: dict[str, Any] = {}
        real = backend.model.generate

        def spy(**kw: Any) -> Any:
            seen.update(kw)
            return real(**kw)

        monkeypatch.setattr(backend.model, "generate", spy)
        short: Conversation = [{"role": "user", "content": "Hi"}]
        out = backend.generate([THREE_TURNS, short], n=2, params=SamplingParams(max_new_tokens=4), seed=0)
        assert [len(row) for row in out] == [2, 2]
        ids, mask = seen["input_ids"].tolist(), seen["attention_mask"].tolist()
        for row, m, conv in zip(ids, mask, [THREE_TURNS, short], strict=True):
            start = m.index(1)
            assert all(m[start:]) and not any(m[:start])  # left padding
            assert row[start:] == render.prompt_ids(tok, conv)
        # Three turns rendered by the template: each turn and the generation prompt are there.
        assert tok.decode(ids[0]).count(IM_START) == 5
        im_end = tok.convert_tokens_to_ids(IM_END)
        assert seen["eos_token_id"] == render.stop_token_ids(tok) == [tok.eos_token_id, im_end]
        assert seen["num_return_sequences"] == 2


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """SQLite only: these tests are about the model, not the database."""
    s = Settings(database_url=sqlite_url, env="test", artifacts_dir=tmp_path / "artifacts")
    monkeypatch.setattr("trainer.sampling.job.get_settings", lambda: s)
    return s


def chat_rows() -> list[dict[str, Any]]:
    return [{"messages": THREE_TURNS}] + [{"prompt": f"What is city number {i}?"} for i in range(5)]


class TestChatSampleJob:
    def test_replies_stop_at_the_end_of_the_turn_and_empty_ones_are_sampled_again(
        self,
        committed_sqlite: sessionmaker[Session],
        settings: Settings,
        replying_chat_model_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        drawn: list[Sample] = []  # every sample the real backend gave, before resampling
        real = sampling.make_backend

        class Recording:
            def __init__(self, inner: Any) -> None:
                self.inner, self.name = inner, inner.name

            def generate(self, prompts: list[Conversation], **kw: Any) -> list[list[Sample]]:
                out: list[list[Sample]] = self.inner.generate(prompts, **kw)
                drawn.extend(s for row in out for s in row)
                return out

        monkeypatch.setattr(sampling, "make_backend", lambda v, s: Recording(real(v, s)))
        set_id, job = sample_in_one_run(
            committed_sqlite,
            settings,
            replying_chat_model_path,
            k=4,
            rows=chat_rows(),
            batch_prompts=3,
            max_new_tokens=MAX_NEW,
        )
        assert job.status == "succeeded", job.error
        with committed_sqlite() as s:
            tasks = list(s.scalars(select(Task).where(Task.prompt_set_id == set_id)))
            completions = [c for t in tasks for c in t.completions]
            first = s.scalars(
                select(Prompt).where(Prompt.prompt_set_id == set_id).order_by(Prompt.id)
            ).first()
            assert first is not None and first.messages == THREE_TURNS
        assert len(tasks) == 6 and len(completions) == 24
        # The model replied with an empty turn at least once; none of those was stored.
        assert any(s.text == "" for s in drawn)
        assert all(c.text.strip() for c in completions)
        for c in completions:
            assert IM_START not in c.text and IM_END not in c.text and "<|endoftext|>" not in c.text
            # Stopped at <|im_end|> (the model never writes EOS): code that stopped at EOS alone
            # would run on to the token limit and record "length".
            assert c.finish_reason == "stop" and c.token_count is not None and 0 < c.token_count < MAX_NEW
        from transformers import AutoTokenizer

        im_end = AutoTokenizer.from_pretrained(replying_chat_model_path).convert_tokens_to_ids(IM_END)
        assert {tuple(c.params["request"]["stop_token_ids"]) for c in completions} == {(1, im_end)}
        assert {c.params["request"]["model"] for c in completions} == {str(replying_chat_model_path)}

    def test_a_prompt_with_only_empty_replies_fails_and_gets_no_task(
        self, committed_sqlite: sessionmaker[Session], settings: Settings, silent_chat_model_path: Path
    ) -> None:
        set_id, job = sample_in_one_run(committed_sqlite, settings, silent_chat_model_path, n=2, k=4)
        assert job.status == "failed"
        with committed_sqlite() as s:
            ids = list(s.scalars(select(Prompt.id).where(Prompt.prompt_set_id == set_id).order_by(Prompt.id)))
            assert f"2 of 2 prompts (ids {ids[0]}, {ids[1]}) got only empty replies" in job.error
            assert "3 resampling rounds" in job.error
            assert s.scalars(select(Task).where(Task.prompt_set_id == set_id)).all() == []
