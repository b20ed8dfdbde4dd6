"""The JSON API: GET /api/v1/tasks/next and POST /api/v1/assignments/{id}/annotation."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.labeling.models import Annotation, AnnotationItem, Assignment, Task
from app.prompts.models import PromptSet
from tests.factories import bearer, make_prompt_set, make_task, make_user

FLAG = "hallucination (makes up information)"


@pytest.fixture
def setup(client: TestClient, session: Session) -> dict[str, Any]:
    user = make_user(session)
    ps = make_prompt_set(session, k=3, overlap=1, flags=[FLAG, "expresses an opinion"])
    task = make_task(session, prompt_set=ps, prompt="Write  a haiku.\n\tNow.")
    headers = bearer(auth.create_token(session=session, user=user).token)
    return {"user": user, "task": task, "h": headers, "ids": [c.id for c in task.completions]}


def _take(client: TestClient, h: dict[str, str]) -> dict[str, Any]:
    r = client.get("/api/v1/tasks/next", headers=h)
    assert r.status_code == 200, r.text
    return r.json()


class TestSubmitWithNext:
    """`?next=true`: the submission's answer carries the next task, one round trip per task."""

    def test_the_answer_carries_the_task_next_would_give_and_null_at_the_end(
        self, client: TestClient, session: Session, setup: dict[str, Any]
    ) -> None:
        second = make_task(
            session, prompt_set=session.get(PromptSet, setup["task"].prompt_set_id), prompt="Second."
        )
        first = _take(client, setup["h"])
        plain = client.post(
            f"/api/v1/assignments/{first['assignment_id']}/annotation",
            headers=setup["h"],
            json={"skip": "unclear"},
        )
        assert plain.status_code == 200 and plain.json()["next"] is None  # not asked for: none taken
        nxt = _take(client, setup["h"])
        assert nxt["prompt"] == "Second." and {c["id"] for c in nxt["completions"]} == {
            c.id for c in second.completions
        }
        ids = [c["id"] for c in nxt["completions"]]
        body = {"ranks": {str(i): n + 1 for n, i in enumerate(ids)}, "ratings": {str(i): 4 for i in ids}}
        url = f"/api/v1/assignments/{nxt['assignment_id']}/annotation?next=true"
        r = client.post(url, headers=setup["h"], json=body)
        assert r.status_code == 200, r.text
        assert r.json()["next"] is None  # the first task was skipped by this labeler: nothing left
        third = make_task(
            session, prompt_set=session.get(PromptSet, setup["task"].prompt_set_id), prompt="Third."
        )
        again = client.post(url, headers=setup["h"], json=body)  # a retried request: same annotation
        assert again.json()["id"] == r.json()["id"]
        carried = again.json()["next"]
        assert carried["prompt"] == "Third." and sorted(c["id"] for c in carried["completions"]) == sorted(
            c.id for c in third.completions
        )
        assert _take(client, setup["h"]) == carried  # the task it carried is the one now held


class TestNextTask:
    def test_returns_the_task_exactly_then_the_same_one_then_204(
        self, client: TestClient, setup: dict[str, Any]
    ) -> None:
        body = _take(client, setup["h"])
        assert set(body) >= {"assignment_id", "prompt", "completions", "flags"}
        assert body["prompt"] == "Write  a haiku.\n\tNow."
        assert sorted(c["id"] for c in body["completions"]) == sorted(setup["ids"])
        assert body["flags"] == [FLAG, "expresses an opinion"]
        assert _take(client, setup["h"])["assignment_id"] == body["assignment_id"]
        ids = [c["id"] for c in body["completions"]]
        r = client.post(
            f"/api/v1/assignments/{body['assignment_id']}/annotation",
            headers=setup["h"],
            json={
                "ranks": {str(ids[0]): 1, str(ids[1]): 1, str(ids[2]): 3},
                "ratings": {str(i): 5 for i in ids},
                "flags": {str(ids[2]): [FLAG]},
                "notes": "ok",
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["ranks"] == {str(ids[0]): 1, str(ids[1]): 1, str(ids[2]): 2}
        assert out["flags"][str(ids[2])] == [FLAG] and out["skipped"] is None
        assert client.get("/api/v1/tasks/next", headers=setup["h"]).status_code == 204

    def test_returns_the_conversation_as_messages_beside_its_text(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        ps = make_prompt_set(session, k=2, overlap=1)
        conversation = [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy? <b>bold</b>"},
        ]
        make_task(session, prompt_set=ps, messages=conversation)
        body = _take(client, bearer(auth.create_token(session=session, user=user).token))
        assert body["messages"] == conversation
        assert body["prompt"] == (
            "System: Answer in one word.\n\nUser: Capital of France?\n\n"
            "Assistant: Paris.\n\nUser: And of Italy? <b>bold</b>"
        )

    def test_a_plain_prompt_is_one_user_message(self, client: TestClient, setup: dict[str, Any]) -> None:
        body = _take(client, setup["h"])
        assert body["messages"] == [{"role": "user", "content": "Write  a haiku.\n\tNow."}]

    def test_needs_a_token_and_the_labeler_role(self, client: TestClient, session: Session) -> None:
        assert client.get("/api/v1/tasks/next").status_code == 401
        researcher = make_user(session, role="researcher")
        h = bearer(auth.create_token(session=session, user=researcher).token)
        assert client.get("/api/v1/tasks/next", headers=h).status_code == 403

    def test_is_documented_in_openapi(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        nxt = spec["paths"]["/api/v1/tasks/next"]["get"]
        assert "204" in nxt["responses"] and "TaskOut" in str(nxt["responses"]["200"])
        task = spec["components"]["schemas"]["TaskOut"]
        assert "messages" in task["required"] and "MessageOut" in str(task["properties"]["messages"])
        roles = spec["components"]["schemas"]["MessageOut"]["properties"]["role"]
        assert roles["enum"] == ["system", "user", "assistant"]
        post = spec["paths"]["/api/v1/assignments/{assignment_id}/annotation"]["post"]
        assert "AnnotationIn" in str(post["requestBody"]) and "422" in post["responses"]
        assert spec["components"]["schemas"]["AnnotationIn"]["examples"][1] == {
            "skip": "unclear",
            "notes": "The instruction is cut off.",
        }


class TestSubmitViaApi:
    def test_submitting_twice_returns_the_same_annotation(
        self, client: TestClient, setup: dict[str, Any]
    ) -> None:
        aid, ids = _take(client, setup["h"])["assignment_id"], setup["ids"]
        body = {
            "ranks": {str(i): n + 1 for n, i in enumerate(ids)},
            "ratings": {str(i): 7 - n for n, i in enumerate(ids)},
        }
        url = f"/api/v1/assignments/{aid}/annotation"
        first = client.post(url, headers=setup["h"], json=body).json()
        second = client.post(url, headers=setup["h"], json={"skip": "unclear"}).json()
        assert first["id"] == second["id"] and second["skipped"] is None

    def test_skip(self, client: TestClient, session: Session, setup: dict[str, Any]) -> None:
        aid = _take(client, setup["h"])["assignment_id"]
        r = client.post(
            f"/api/v1/assignments/{aid}/annotation",
            headers=setup["h"],
            json={"skip": "harmful", "notes": "asks for a weapon"},
        )
        assert r.status_code == 200 and r.json()["skipped"] == "harmful"
        assert session.get(Task, setup["task"].id).label_count == 0  # type: ignore[union-attr]

    def test_someone_elses_assignment_is_404(
        self, client: TestClient, session: Session, setup: dict[str, Any]
    ) -> None:
        aid = _take(client, setup["h"])["assignment_id"]
        other = bearer(auth.create_token(session=session, user=make_user(session)).token)
        r = client.post(f"/api/v1/assignments/{aid}/annotation", headers=other, json={"skip": "other"})
        assert r.status_code == 404
        for huge in (2**31, 10**30):  # beyond a 32-bit id: still a 404, not PostgreSQL's DataError
            r = client.post(f"/api/v1/assignments/{huge}/annotation", headers=other, json={"skip": "other"})
            assert r.status_code == 404


def _valid(ids: list[int]) -> dict[str, Any]:
    return {
        "ranks": {str(ids[0]): 1, str(ids[1]): 2, str(ids[2]): 3},
        "ratings": {str(ids[0]): 6, str(ids[1]): 4, str(ids[2]): 2},
    }


def _drop(d: dict[str, Any], key: str, cid: int) -> dict[str, Any]:
    d[key] = {k: v for k, v in d[key].items() if k != str(cid)}
    return d


# (name, change to a valid body, the field the 422 must name)
BAD_SHAPES: list[tuple[str, Any, str]] = [
    ("no ranks", lambda ids, d: {"ratings": d["ratings"]}, "ranks"),
    ("a completion unranked", lambda ids, d: _drop(d, "ranks", ids[2]), "ranks"),
    ("a foreign completion", lambda ids, d: {**d, "ranks": {**d["ranks"], "999999": 3}}, "ranks"),
    ("not a completion id", lambda ids, d: {**d, "ranks": {**d["ranks"], "abc": 1}}, "ranks"),
    ("rank 0", lambda ids, d: {**d, "ranks": {**d["ranks"], str(ids[0]): 0}}, "ranks.{0}"),
    ("rank above K", lambda ids, d: {**d, "ranks": {**d["ranks"], str(ids[2]): 4}}, "ranks.{2}"),
    ("rank not a number", lambda ids, d: {**d, "ranks": {**d["ranks"], str(ids[1]): "second"}}, "ranks.{1}"),
    ("rank true", lambda ids, d: {**d, "ranks": {**d["ranks"], str(ids[0]): True}}, "ranks.{0}"),
    ("rank as text", lambda ids, d: {**d, "ranks": {**d["ranks"], str(ids[0]): "1"}}, "ranks.{0}"),
    ("rank 2.0", lambda ids, d: {**d, "ranks": {**d["ranks"], str(ids[1]): 2.0}}, "ranks.{1}"),
    ("rating true", lambda ids, d: {**d, "ratings": {**d["ratings"], str(ids[2]): True}}, "ratings.{2}"),
    ("no rank 1", lambda ids, d: {**d, "ranks": {str(ids[0]): 2, str(ids[1]): 2, str(ids[2]): 3}}, "ranks"),
    ("rating 8", lambda ids, d: {**d, "ratings": {**d["ratings"], str(ids[1]): 8}}, "ratings.{1}"),
    ("a rating missing", lambda ids, d: _drop(d, "ratings", ids[0]), "ratings"),
    ("a flag not of this set", lambda ids, d: {**d, "flags": {str(ids[0]): ["is rude"]}}, "flags.{0}"),
    ("flags not a list", lambda ids, d: {**d, "flags": {str(ids[0]): FLAG}}, "flags.{0}"),
    ("unknown skip reason", lambda ids, d: {"skip": "bored"}, "skip"),
    ("skip with ranks", lambda ids, d: {**d, "skip": "unclear"}, "skip"),
    ("an unknown field", lambda ids, d: {**d, "score": 3}, "score"),
    ("a NUL in the notes", lambda ids, d: {**d, "notes": "a\x00b"}, "notes"),
    ("a NUL in a skip's notes", lambda ids, d: {"skip": "other", "notes": "a\x00b"}, "notes"),
    (
        "ratings contradict ranks",
        lambda ids, d: {**d, "ratings": {str(ids[0]): 2, str(ids[1]): 4, str(ids[2]): 6}},
        "confirm_inconsistent",
    ),
]


@pytest.mark.parametrize(
    ("change", "field"), [(c, f) for _, c, f in BAD_SHAPES], ids=[n for n, _, _ in BAD_SHAPES]
)
def test_every_invalid_submission_is_refused_naming_the_field_and_nothing_is_stored(
    client: TestClient, session: Session, setup: dict[str, Any], change: Any, field: str
) -> None:
    aid, ids = _take(client, setup["h"])["assignment_id"], setup["ids"]
    r = client.post(
        f"/api/v1/assignments/{aid}/annotation", headers=setup["h"], json=change(ids, _valid(ids))
    )
    assert r.status_code == 422, r.text
    named = [e["field"] for e in r.json()["detail"]]
    assert field.format(*ids) in named, named
    assert session.scalar(select(func.count()).select_from(Annotation)) == 0
    assert session.scalar(select(func.count()).select_from(AnnotationItem)) == 0
    session.expire_all()
    assert session.get(Task, setup["task"].id).label_count == 0  # type: ignore[union-attr]
    assert session.get(Assignment, aid).state == "active"  # type: ignore[union-attr]
    # The assignment is still usable: the valid body goes through.
    ok = client.post(f"/api/v1/assignments/{aid}/annotation", headers=setup["h"], json=_valid(ids))
    assert ok.status_code == 200, ok.text
