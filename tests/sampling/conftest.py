"""A tiny policy built once per test session with the demo builder (hidden 32, 2 layers), a
registered version of it, and helpers that make a prompt set and run its sampling job."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_sessionmaker
from app.prompts import service as prompts
from app.prompts.models import PromptSet
from app.runs.models import Job, ModelVersion
from tests.conftest import _empty_all_tables


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


@pytest.fixture
def committed_sqlite(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    """Real commits on SQLite only, for tests whose point is not the database."""
    _empty_all_tables(sqlite_url)
    yield make_sessionmaker(sqlite_url)
    _empty_all_tables(sqlite_url)


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
) -> tuple[int, int]:
    """A set of n distinct prompts and its queued sample job: (set id, job id)."""
    data = "\n".join(
        json.dumps({"prompt": f"How do I make tea number {i}?", "topic": "tea"}) for i in range(n)
    ).encode()
    with sessions.begin() as s:
        ps = prompts.import_prompt_set(
            session=s,
            settings=settings,
            name=name,
            filename="p.jsonl",
            data=data,
            k=k,
            sampling={"max_new_tokens": max_new_tokens},
            policy_version_id=version_id,
            compare_version_id=compare_id,
        )
        job = s.get(Job, ps.report["job_id"])
        assert job is not None
        job.params = {**job.params, "batch_prompts": batch_prompts}
        return ps.id, job.id


def set_of(sessions: sessionmaker[Session], set_id: int) -> PromptSet:
    with sessions() as s:
        ps = s.get(PromptSet, set_id)
        assert ps is not None
        return ps
