"""A tiny policy built once per test session with the demo builder (hidden 32, 2 layers), a
registered version of it, and helpers that make a prompt set and run its sampling job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.chat import Conversation
from app.config import Settings
from app.prompts import upload
from app.prompts.models import PromptSet
from app.runs.models import Job, ModelVersion
from trainer.worker import Worker


@pytest.fixture(scope="session")
def tiny_policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # No hub, no network: the builder must work offline.
    os.environ["HF_HUB_OFFLINE"] = "1"
    from trainer.models.demo import TINY, build_demo_policy

    return build_demo_policy(tmp_path_factory.mktemp("policy") / "tiny-policy", TINY)


@pytest.fixture
def settings(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = Settings(database_url=db_url, env="test", artifacts_dir=tmp_path / "artifacts", openai_retries=2)
    monkeypatch.setattr("trainer.sampling.job.get_settings", lambda: s)
    return s


def add_version(
    sessions: sessionmaker[Session],
    path: Path,
    *,
    name: str = "tiny",
    active: bool = True,
    is_demo: bool = False,
) -> int:
    with sessions.begin() as s:
        mv = ModelVersion(
            kind="policy", name=name, source=str(path), path=str(path), is_active=active, is_demo=is_demo
        )
        s.add(mv)
        s.flush()
        return mv.id


def make_set(
    sessions: sessionmaker[Session],
    settings: Settings,
    version_id: int,
    *,
    n: int = 6,
    k: int = 4,
    name: str = "set",
    compare_id: int | None = None,
    batch_prompts: int = 2,
    max_new_tokens: int = 8,
    rows: list[dict[str, Any]] | None = None,
    kind: str = "ranking",
) -> tuple[int, int]:
    """A set of n distinct prompts (or of `rows`, JSON Lines records) and its queued sample
    job: (set id, job id)."""
    rows = rows or [{"prompt": f"How do I make tea number {i}?", "topic": "tea"} for i in range(n)]
    data = "\n".join(json.dumps(row) for row in rows).encode()
    with sessions.begin() as s:
        ps = upload.import_prompt_set(
            session=s,
            settings=settings,
            name=name,
            filename="p.jsonl",
            data=data,
            kind=kind,
            k=k,
            sampling={"max_new_tokens": max_new_tokens},
            policy_version_id=version_id,
            compare_version_id=compare_id,
        )
        job = s.get(Job, ps.report["job_id"])
        assert job is not None
        job.params = {**job.params, "batch_prompts": batch_prompts}
        return ps.id, job.id


def sample_in_one_run(
    sessions: sessionmaker[Session], settings: Settings, model_path: Path, **set_kw: Any
) -> tuple[int, Job]:
    """make_set's set (of `set_kw`), sampled by the model at `model_path` registered as the
    active policy, in one worker run: the set's id and its job, finished."""
    set_id, job_id = make_set(sessions, settings, add_version(sessions, model_path), **set_kw)
    assert Worker(sessions, worker_id="w").run_one()
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return set_id, job


def set_of(sessions: sessionmaker[Session], set_id: int) -> PromptSet:
    with sessions() as s:
        ps = s.get(PromptSet, set_id)
        assert ps is not None
        return ps


# What the replying chat model answers: a word and the end of its turn, or the end of its turn at
# once (an empty reply), which the sample job must sample again.
REPLIES = ["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Oslo", "Vienna", ""]
TRAIN_PROMPTS: list[Conversation] = [
    [{"role": "user", "content": "How do I make tea?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Name a city."},
        {"role": "assistant", "content": "Rome"},
        {"role": "user", "content": "Another one?"},
    ],
    [{"role": "user", "content": "Tell me a story about a cat number 3."}],
]


def teach_replies(src: Path, dst: Path, replies: list[str], *, steps: int = 80) -> Path:
    """The tiny chat model of `src`, fine-tuned into `dst` to answer with one of `replies` and
    end its turn with <|im_end|> (random weights almost never write it, and tests of stopping
    need a model that does). Trained through trainer.render's reply_ids, like SFT."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import render

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    rows = [render.reply_ids(tok, conv, reply) for conv in TRAIN_PROMPTS for reply in replies]
    width = max(len(r.input_ids) for r in rows)
    pad = render.pad_id(tok)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T): the replies only
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, : len(r.input_ids)] = 1
        labels[i, r.prompt_len : len(r.input_ids)] = torch.tensor(r.input_ids[r.prompt_len :])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains several times faster on one thread
    try:
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    shutil.copytree(src, dst)
    model.save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def replying_chat_model_path(tiny_chat_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model taught to answer one of REPLIES (about one in eight empty) and stop."""
    return teach_replies(tiny_chat_model_path, tmp_path_factory.mktemp("chat") / "replying", REPLIES)


@pytest.fixture(scope="session")
def silent_chat_model_path(tiny_chat_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model taught to end its turn at once: every reply is empty."""
    return teach_replies(tiny_chat_model_path, tmp_path_factory.mktemp("chat") / "silent", [""], steps=60)
