"""The labeling hot path stays a few statements: at most 4 per `next` and 4 per `submit`, the
auth lookup included, counted on the real engine (SQLite and PostgreSQL) with a cursor listener.

SQLite's explicit BEGIN (app/db.py emits it; psycopg sends PostgreSQL's itself, unseen by the
listener) is transaction control, not a statement of the request, so it is not counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth
from app.main import create_app
from tests.conftest import make_settings
from tests.factories import bearer, csrf_of, login, make_prompt_set, make_task, make_user

LIMIT = 4


@contextmanager
def counting(client: TestClient) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.strip().upper() != "BEGIN":
            seen.append(statement)

    engine = client.app.state.sessionmaker.kw["bind"]  # type: ignore[attr-defined]  # the app's own
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _body(task: dict[str, Any]) -> dict[str, Any]:
    ids = [c["id"] for c in task["completions"]]
    return {
        "ranks": {str(c): i + 1 for i, c in enumerate(ids)},
        "ratings": {str(c): 7 - i for i, c in enumerate(ids)},
    }


@pytest.fixture
def live(db_url: str, committed: sessionmaker[Session], tmp_path: Path) -> Iterator[TestClient]:
    """The real app on the real engine, with real commits (no test transaction's savepoints)."""
    application = create_app(
        make_settings(db_url, artifacts_dir=tmp_path / "artifacts", auth_cache_seconds=60)
    )
    with TestClient(application, base_url="http://testserver") as c:
        yield c


def _labeler_with_tasks(committed: sessionmaker[Session], tasks: int) -> dict[str, str]:
    """A labeler's API headers, and `tasks` open tasks of K=4, overlap 2."""
    with committed.begin() as s:
        user = make_user(s)
        ps = make_prompt_set(s, k=4, overlap=2)
        for _ in range(tasks):
            make_task(s, prompt_set=ps)
        return bearer(auth.create_token(session=s, user=user).token)


def test_api_next_and_submit_take_at_most_four_statements_each(
    live: TestClient, committed: sessionmaker[Session], db_url: str
) -> None:
    h = _labeler_with_tasks(committed, 3)
    assert live.get("/api/v1/tasks/next", headers=h).status_code == 200  # warm: the held task again
    counts: dict[str, int] = {}
    for round_ in range(2):
        with counting(live) as seen:
            r = live.get("/api/v1/tasks/next", headers=h)
        assert r.status_code == 200, r.text
        counts[f"next (held) {round_}" if round_ == 0 else "next (new claim)"] = len(seen)
        held = seen
        with counting(live) as seen:
            s2 = live.post(
                f"/api/v1/assignments/{r.json()['assignment_id']}/annotation", headers=h, json=_body(r.json())
            )
        assert s2.status_code == 200, s2.text
        counts[f"submit {round_}"] = len(seen)
        assert len(held) <= LIMIT and len(seen) <= LIMIT, (counts, held, seen)
    with counting(live) as seen:
        again = live.post(
            f"/api/v1/assignments/{r.json()['assignment_id']}/annotation", headers=h, json=_body(r.json())
        )
    assert again.status_code == 200 and again.json()["id"] == s2.json()["id"]
    if db_url.startswith("postgresql"):
        # The UPDATE that finishes the assignment, then one statement for the annotation, its
        # items and the task's count.
        assert counts["submit 1"] == 2, counts
        assert [i["rank"] for i in _items(committed, s2.json()["id"])] == [1, 2, 3, 4]
    print(counts)


def _items(committed: sessionmaker[Session], annotation_id: int) -> list[dict[str, Any]]:
    with committed() as s:
        rows = s.execute(
            text("SELECT rank, rating, position FROM annotation_item WHERE annotation_id = :a ORDER BY rank"),
            {"a": annotation_id},
        )
        return [dict(r._mapping) for r in rows]


def test_the_page_next_and_submit_take_at_most_four_statements_each(
    live: TestClient, committed: sessionmaker[Session], db_url: str
) -> None:
    with committed.begin() as s:
        user = make_user(s)
        ps = make_prompt_set(s, k=3, overlap=1)
        tasks = [make_task(s, prompt_set=ps) for _ in range(3)]
    login(live, user)
    csrf = csrf_of(live)
    for _ in range(2):
        with counting(live) as seen:
            page = live.get("/label")
        assert page.status_code == 200 and "Task " in page.text
        assert len(seen) <= LIMIT, "\n".join(s[:90] for s in seen)
        aid = int(re.search(r'action="/label/(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        ids = [int(i) for i in re.findall(r'name="rank-(\d+)"', page.text)]
        data = {"csrf_token": csrf}
        for i, cid in enumerate(ids):
            data[f"rank-{cid}"] = str(i + 1)
            data[f"rating-{cid}"] = str(7 - i)
        with counting(live) as seen:
            r = live.post(f"/label/{aid}", data=data, follow_redirects=False)
        assert r.status_code == 303, r.text
        assert len(seen) <= LIMIT, "\n".join(s[:90] for s in seen)
    assert len(tasks) == 3


def test_submit_with_next_is_a_submit_and_a_next_in_one_request(
    live: TestClient, committed: sessionmaker[Session], db_url: str
) -> None:
    h = _labeler_with_tasks(committed, 2)
    task = live.get("/api/v1/tasks/next", headers=h).json()
    with counting(live) as seen:
        r = live.post(
            f"/api/v1/assignments/{task['assignment_id']}/annotation?next=true", headers=h, json=_body(task)
        )
    assert r.status_code == 200 and r.json()["next"]["assignment_id"] != task["assignment_id"]
    assert len(seen) <= 2 * LIMIT, "\n".join(s[:90] for s in seen)


def test_a_demonstration_submit_takes_at_most_four_statements(
    live: TestClient, committed: sessionmaker[Session], db_url: str
) -> None:
    with committed.begin() as s:
        user = make_user(s)
        ps = make_prompt_set(s, kind="demonstration", overlap=2)
        for n in range(2):
            make_task(s, prompt_set=ps, completions=[f"Draft {n}."])
        h = bearer(auth.create_token(session=s, user=user).token)
    for _ in range(2):
        r = live.get("/api/v1/tasks/next", headers=h)
        assert r.status_code == 200 and r.json()["kind"] == "demonstration", r.text
        draft = r.json()["draft"]
        body = {"reply": draft["text"] + " Edited.", "draft_completion_id": draft["completion_id"]}
        with counting(live) as seen:
            done = live.post(
                f"/api/v1/assignments/{r.json()['assignment_id']}/demonstration", headers=h, json=body
            )
        assert done.status_code == 200 and done.json()["edit_distance"] == 8, done.text
        assert len(seen) <= LIMIT, "\n".join(st[:90] for st in seen)


def test_the_labeling_api_is_the_first_router_a_request_is_matched_against(db_url: str) -> None:
    """Each included router's routes are tried in order (app/main.py DOMAINS): the hot path's
    routes come before the 80 others (only the docs and /static, one pattern each, are ahead)."""
    from app.labeling import views as labeling_views

    routers = [r for r in create_app(make_settings(db_url)).router.routes if hasattr(r, "original_router")]
    assert routers[0].original_router is labeling_views.api
