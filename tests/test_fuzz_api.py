"""schemathesis against the real app's OpenAPI spec on PostgreSQL, as an admin (every role's
routes open): valid and invalid inputs for every operation, and no answer may be a 5xx.

The examples are bounded (EXAMPLES per operation and mode) so the run takes under a minute;
`RANKLAB_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_api.py` searches longer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth
from app.main import create_app
from tests.conftest import make_settings
from tests.factories import make_prompt_set, make_task, make_user

EXAMPLES = int(os.environ.get("RANKLAB_FUZZ_EXAMPLES", "12"))
# Revoking a token can hit the one the run uses (ids are small): last, so nothing after it is
# answered 401 instead of being exercised.
LAST = {("DELETE", "/api/v1/tokens/{token_id}"), ("POST", "/account/tokens/{token_id}/revoke")}


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL: where huge ids, NUL characters and overflows turn into 500s."""
    return pg_url


@pytest.fixture
def fuzz_app(sessions: sessionmaker[Session], pg_url: str, tmp_path: Path) -> FastAPI:
    application = create_app(make_settings(pg_url, artifacts_dir=tmp_path / "artifacts"))
    application.state.sessionmaker = sessions
    return application


@pytest.mark.fuzz
def test_no_input_makes_a_server_error(fuzz_app: FastAPI, session: Session) -> None:
    admin = make_user(session, role="admin")
    make_task(session, prompt_set=make_prompt_set(session, k=4))  # something to take and label
    token = auth.create_token(session=session, user=admin).token
    session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", fuzz_app)
    operations = [r.ok() for r in schema.get_all_operations()]
    operations.sort(key=lambda op: (op.method.upper(), op.path) in LAST)
    assert len(operations) > 20, [op.label for op in operations]

    failures: list[str] = []
    for op in operations:
        strategy = st.one_of(
            op.as_strategy(generation_mode=GenerationMode.POSITIVE),
            op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=2 * EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run: a failure here is reproducible
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error], allow_redirects=False)

        try:
            run()
        except Exception as exc:  # noqa: BLE001  (collected: one run names every failing route)
            failures.append(f"{op.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
