"""A small hand-made dataset shared by the export tests."""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy.orm import Session, sessionmaker

from app.auth.models import User
from app.exports import service
from app.exports.filters import Filters
from app.exports.formats import RowOptions
from app.labeling.models import Annotation, Task
from app.prompts.models import PromptSet
from app.runs.models import ModelVersion
from tests.factories import (
    make_annotation,
    make_model_version,
    make_prompt_set,
    make_task,
    make_user,
)

SECRET = "test-secret"


@dataclass
class World:
    set_a: PromptSet
    set_b: PromptSet
    v1: ModelVersion
    v2: ModelVersion
    alice: User
    bob: User
    t1: Task
    t2: Task
    t3: Task
    anns: dict[str, Annotation]


def build(session: Session) -> World:
    """Set A (K=4): t1 labeled by alice (1,1,2,3) and bob (1,2,3,4); t2 by alice (4,3,2,1) with a
    flag, bob skipped it. Set B (K=3, v2 outputs): t3 by bob (1,2,2) at a later time."""
    v1 = make_model_version(session, name="policy-v1")
    v2 = make_model_version(session, name="policy-v2")
    set_a = make_prompt_set(session, name="set-a", k=4)
    set_b = make_prompt_set(session, name="set-b", k=3)
    alice = make_user(session, username="alice")
    bob = make_user(session, username="bob")
    t1 = make_task(session, prompt_set=set_a, prompt="Write a haiku about rain.", policy=v1)
    t2 = make_task(session, prompt_set=set_a, prompt="Explain gravity.", policy=v1)
    t3 = make_task(session, prompt_set=set_b, prompt="Say hi.", policy=v2)
    anns = {
        "a1": make_annotation(
            session, task=t1, user=alice, ranks=[1, 1, 2, 3], ratings=[6, 6, 4, 2], notes="close call"
        ),
        "b1": make_annotation(session, task=t1, user=bob, ranks=[1, 2, 3, 4], ratings=[7, 5, 3, 1]),
        "a2": make_annotation(
            session,
            task=t2,
            user=alice,
            ranks=[4, 3, 2, 1],
            flags=[["hallucination (makes up information)"], [], [], []],
        ),
        "b2": make_annotation(session, task=t2, user=bob, ranks=[], skip_reason="unclear"),
        "b3": make_annotation(session, task=t3, user=bob, ranks=[1, 2, 2], ratings=[5, 3, 3]),
    }
    anns["b3"].created_at = datetime(2030, 1, 1, tzinfo=UTC)
    session.flush()
    return World(set_a, set_b, v1, v2, alice, bob, t1, t2, t3, anns)


def run_export(
    session: Session,
    fmt: str,
    file_type: str = "jsonl",
    filters: Filters | None = None,
    opts: RowOptions | None = None,
    real_names: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    ex = service.export(
        session_factory=_same(session),
        fmt=fmt,
        file_type=file_type,
        filters=filters or Filters(),
        opts=opts or RowOptions(),
        secret=SECRET,
        real_names=real_names,
    )
    data = b"".join(ex.stream)
    return data, ex.manifest()


class _same:
    """A session factory handing out the test's own session (not closed on exit)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def __call__(self) -> _same:
        return self

    def __enter__(self) -> Session:
        return self.session

    def __exit__(self, *exc: object) -> None:
        return None


def read_rows(data: bytes, file_type: str) -> list[dict[str, Any]]:
    if file_type == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if file_type == "jsonl.gz":
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode().splitlines()]


def factory_of(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    return sessions
