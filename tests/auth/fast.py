"""Cheap argon2 parameters for tests: the real ones cost ~0.5 s a hash on a busy CI machine.

Import the fixture into a test module (`from tests.auth.fast import fast_hashes  # noqa: F401`);
it is autouse there. Hashes keep their own parameters, so verification stays real."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher

from app.auth import security


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(security, "_hasher", fast)
    monkeypatch.setattr(security, "_DUMMY_HASH", fast.hash("not-a-real-password"))
    yield
