"""Demonstration tasks over the JSON API and the page: write, skip, validation, idempotency,
overlap, drafts and their edit distance, the token limit, history."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.labeling.demonstrations import levenshtein
from app.labeling.models import Annotation, Assignment, Completion, Demonstration, Task
from app.prompts.models import PromptSet
from tests.factories import bearer, csrf_of, login, make_model_version, make_prompt_set, make_task, make_user

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another <b>one</b>?"},
]


def _token(session: Session, **kw: Any) -> dict[str, str]:
    return bearer(auth.create_token(session=session, user=make_user(session, **kw)).token)


def _demo_set(session: Session, *, overlap: int = 1, n: int = 1, draft: str | None = None) -> list[Task]:
    ps = make_prompt_set(session, kind="demonstration", overlap=overlap)
    return [
        make_task(session, prompt_set=ps, messages=CONVERSATION, completions=[draft] if draft else None)
        for _ in range(n)
    ]


def _next(client: TestClient, h: dict[str, str]) -> dict[str, Any]:
    r = client.get("/api/v1/tasks/next", headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def _post(client: TestClient, h: dict[str, str], aid: int, body: dict[str, Any]) -> Any:
    return client.post(f"/api/v1/assignments/{aid}/demonstration", headers=h, json=body)


def _count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


class TestLevenshtein:
    @pytest.mark.parametrize(
        ("a", "b", "d"),
        [
            ("", "", 0),
            ("", "abc", 3),
            ("abc", "", 3),
            ("kitten", "sitting", 3),
            ("flaw", "lawn", 2),
            ("same", "same", 0),
            ("ab", "ba", 2),
            ("héllo", "hello", 1),  # characters, not bytes
            ("Rain falls.", "Rain falls softly.", 7),
        ],
    )
    def test_known_distances(self, a: str, b: str, d: int) -> None:
        assert levenshtein(a, b) == d
        assert levenshtein(b, a) == d


class TestApi:
    def test_next_gives_the_kind_the_messages_and_no_draft_then_a_reply_is_stored(
        self, client: TestClient, session: Session
    ) -> None:
        (task,) = _demo_set(session)
        h = _token(session)
        body = _next(client, h)
        assert body["kind"] == "demonstration" and body["draft"] is None
        assert body["messages"] == CONVERSATION and body["completions"] == []
        r = _post(client, h, body["assignment_id"], {"reply": "  Green.\r\n", "draft_completion_id": None})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["reply"] == "Green." and out["skipped"] is None and out["draft_used"] is False
        assert out["edit_distance"] is None and out["token_count"] > 0
        demo = session.scalars(select(Demonstration)).one()
        assert demo.reply == "Green." and demo.annotation.task_id == task.id
        session.refresh(task)
        assert task.label_count == 1 and task.status == "closed"
        again = _post(client, h, body["assignment_id"], {"reply": "Something else."})
        assert (
            again.status_code == 200 and again.json()["id"] == out["id"] and again.json()["reply"] == "Green."
        )
        assert _count(session, Demonstration) == 1
        assert client.get("/api/v1/tasks/next", headers=h).status_code == 204

    def test_a_draft_is_offered_and_its_edit_distance_stored(
        self, client: TestClient, session: Session
    ) -> None:
        (task,) = _demo_set(session, draft="Rain falls.")
        h = _token(session)
        body = _next(client, h)
        draft = body["draft"]
        assert draft == {"completion_id": task.completions[0].id, "text": "Rain falls."}
        r = _post(
            client,
            h,
            body["assignment_id"],
            {"reply": "Rain falls softly.", "draft_completion_id": draft["completion_id"]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["draft_used"] is True and r.json()["edit_distance"] == 7
        demo = session.scalars(select(Demonstration)).one()
        assert (demo.draft_used, demo.draft_completion_id, demo.edit_distance) == (
            True,
            draft["completion_id"],
            7,
        )

    def test_skip_with_a_reason_frees_the_task(self, client: TestClient, session: Session) -> None:
        (task,) = _demo_set(session)
        h, other = _token(session), _token(session)
        aid = _next(client, h)["assignment_id"]
        r = _post(client, h, aid, {"skip": "unclear", "notes": "cut off"})
        assert r.status_code == 200, r.text
        assert r.json()["skipped"] == "unclear" and r.json()["reply"] is None
        assert _count(session, Demonstration) == 0
        session.refresh(task)
        assert task.label_count == 0 and task.status == "open"
        assert _next(client, other)["kind"] == "demonstration"  # someone else may take it

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"reply": ""}, "reply"),
            ({"reply": " \n\t "}, "reply"),
            ({"reply": "a\x00b"}, "reply"),
            ({}, "reply"),
            ({"reply": "ok", "draft_completion_id": 999999}, "draft_completion_id"),
            ({"skip": "bored"}, "skip"),
            ({"skip": "unclear", "reply": "x"}, "skip"),
            ({"reply": "ok", "ranks": {"1": 1}}, "ranks"),
            ({"reply": 5}, "reply"),
        ],
    )
    def test_a_broken_rule_is_a_422_naming_the_field_and_changes_nothing(
        self, client: TestClient, session: Session, body: dict[str, Any], field: str
    ) -> None:
        (task,) = _demo_set(session)
        h = _token(session)
        aid = _next(client, h)["assignment_id"]
        r = _post(client, h, aid, body)
        assert r.status_code == 422, r.text
        problems = r.json()["detail"]
        assert any(field in (p.get("field") or "") for p in problems), problems
        assert _count(session, Annotation) == 0 and _count(session, Demonstration) == 0
        session.expire_all()
        assert session.get(Assignment, aid).state == "active"  # type: ignore[union-attr]
        assert session.get(Task, task.id).label_count == 0  # type: ignore[union-attr]

    def test_over_the_token_limit_after_the_template_is_refused(
        self, client: TestClient, session: Session
    ) -> None:
        _demo_set(session)
        h = _token(session)
        aid = _next(client, h)["assignment_id"]
        client.app.state.settings = client.app.state.settings.model_copy(
            update={"max_demonstration_tokens": 40}
        )  # type: ignore[attr-defined]
        r = _post(client, h, aid, {"reply": "word " * 40})
        assert r.status_code == 422, r.text
        (problem,) = r.json()["detail"]
        assert problem["field"] == "reply" and "at most 40" in problem["message"]
        assert _post(client, h, aid, {"reply": "Short."}).status_code == 200

    def test_overlap_gives_the_task_to_that_many_labelers_once_each(
        self, client: TestClient, session: Session
    ) -> None:
        (task,) = _demo_set(session, overlap=2)
        a, b, c = _token(session), _token(session), _token(session)
        ta, tb = _next(client, a), _next(client, b)
        assert ta["assignment_id"] != tb["assignment_id"]
        assert client.get("/api/v1/tasks/next", headers=c).status_code == 204  # two leases hold it
        assert _post(client, a, ta["assignment_id"], {"reply": "One."}).status_code == 200
        assert _post(client, b, tb["assignment_id"], {"reply": "Two."}).status_code == 200
        session.refresh(task)
        assert task.label_count == 2 and task.status == "closed"
        assert client.get("/api/v1/tasks/next", headers=a).status_code == 204

    def test_the_kinds_do_not_mix_and_the_next_task_may_be_of_either(
        self, client: TestClient, session: Session
    ) -> None:
        ranking = make_task(session, prompt_set=make_prompt_set(session, k=4))
        _demo_set(session)
        h = _token(session)
        first = _next(client, h)
        assert first["kind"] == "ranking" and first["k"] == 4
        wrong = _post(client, h, first["assignment_id"], {"reply": "Hello."})
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["field"] == "kind"
        ids = [c.id for c in ranking.completions]
        ok = client.post(
            f"/api/v1/assignments/{first['assignment_id']}/annotation",
            headers=h,
            json={"ranks": {str(i): n + 1 for n, i in enumerate(ids)}, "ratings": {str(i): 4 for i in ids}},
        )
        assert ok.status_code == 200, ok.text
        second = _next(client, h)
        assert second["kind"] == "demonstration"
        as_ranking = client.post(
            f"/api/v1/assignments/{second['assignment_id']}/annotation",
            headers=h,
            json={"ranks": {}, "ratings": {}},
        )
        assert as_ranking.status_code == 422 and as_ranking.json()["detail"][0]["field"] == "kind"
        assert _post(client, h, second["assignment_id"], {"reply": "Fine."}).status_code == 200

    def test_another_labelers_assignment_is_a_404(self, client: TestClient, session: Session) -> None:
        _demo_set(session)
        mine, theirs = _token(session), _token(session)
        aid = _next(client, mine)["assignment_id"]
        assert _post(client, theirs, aid, {"reply": "Mine now."}).status_code == 404
        assert _post(client, mine, 2**40, {"reply": "x"}).status_code == 404

    def test_the_openapi_page_documents_the_endpoint(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        op = spec["paths"]["/api/v1/assignments/{assignment_id}/demonstration"]["post"]
        assert "422" in op["responses"]
        assert "DemonstrationIn" in str(op["requestBody"])


class TestPage:
    def test_a_form_of_the_other_kind_gets_a_422_page_not_a_server_error(
        self, client: TestClient, session: Session
    ) -> None:
        """The fuzz found it: a reply posted to a ranking task (and ranks to a demonstration task)
        re-rendered the task's page with the other kind's entries and failed with a 500."""
        ranking = make_prompt_set(session, k=2)
        make_task(session, prompt_set=ranking, prompt="Rank these.", completions=["one", "two"])
        login(client, make_user(session))
        page = client.get("/label")
        aid = int(re.search(r'action="/label/(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        csrf = csrf_of(client)
        answer = client.post(f"/label/{aid}/demonstration", data={"csrf_token": csrf, "reply": "A reply."})
        assert answer.status_code == 422 and "kind" in answer.text and 'name="rating-' in answer.text
        session.execute(update(Task).values(status="closed"))
        session.commit()
        (task,) = _demo_set(session)
        client.post(f"/label/{aid}/skip", data={"csrf_token": csrf, "reason": "other"})
        page = client.get("/label")
        did = int(re.search(r'action="/label/(\d+)/demonstration"', page.text).group(1))  # type: ignore[union-attr]
        answer = client.post(f"/label/{did}", data={"csrf_token": csrf, "rank-1": "1"})
        assert answer.status_code == 422 and "kind" in answer.text and 'id="reply"' in answer.text

    def test_the_page_shows_the_editor_and_a_form_post_stores_the_reply(
        self, client: TestClient, session: Session
    ) -> None:
        (task,) = _demo_set(session, draft="A <i>draft</i>.")
        user = make_user(session)
        login(client, user)
        page = client.get("/label")
        assert page.status_code == 200
        assert 'id="reply"' in page.text and "Start from a draft" in page.text
        assert "Another &lt;b&gt;one&lt;/b&gt;?" in page.text and "<b>one</b>" not in page.text
        assert "A &lt;i&gt;draft&lt;/i&gt;." in page.text
        aid = int(re.search(r'action="/label/(\d+)/demonstration"', page.text).group(1))  # type: ignore[union-attr]
        csrf = csrf_of(client)
        empty = client.post(f"/label/{aid}/demonstration", data={"csrf_token": csrf, "reply": "   "})
        assert empty.status_code == 422 and "reply: the reply is empty" in empty.text
        r = client.post(
            f"/label/{aid}/demonstration",
            data={
                "csrf_token": csrf,
                "reply": "A fine reply.",
                "draft_completion_id": str(task.completions[0].id),
            },
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        demo = session.scalars(select(Demonstration)).one()
        assert (
            demo.reply == "A fine reply."
            and demo.draft_used
            and demo.edit_distance == levenshtein("A <i>draft</i>.", "A fine reply.")
        )
        history = client.get("/label/history").text
        assert "wrote:" in history and "A fine reply." in history and "from a draft" in history

    def test_the_draft_endpoint_says_when_it_is_not_ready(self, client: TestClient, session: Session) -> None:
        (task,) = _demo_set(session)
        user = make_user(session)
        login(client, user)
        page = client.get("/label")
        aid = int(re.search(r'action="/label/(\d+)/demonstration"', page.text).group(1))  # type: ignore[union-attr]
        missing = client.get(f"/label/{aid}/draft")
        assert missing.status_code == 404 and "not ready" in missing.text
        session.add(Completion(task_id=task.id, text="Late draft.", finish_reason="stop"))
        session.flush()
        ready = client.get(f"/label/{aid}/draft")
        assert ready.status_code == 200 and ready.json()["text"] == "Late draft."


def test_a_demonstration_set_is_not_in_the_quality_figures_or_ranking_exports(
    client: TestClient, session: Session
) -> None:
    from app.quality import service as quality

    _demo_set(session)
    h = _token(session)
    aid = _next(client, h)["assignment_id"]
    assert _post(client, h, aid, {"reply": "Yes."}).status_code == 200
    assert quality.load(session=session) == []
    assert session.scalar(select(PromptSet.kind)) == "demonstration"


class TestTokenLimit:
    """The reply is counted with the conversation through the policy's own chat template."""

    def test_the_count_is_the_templates_and_the_limit_names_the_reply(
        self, client: TestClient, session: Session, tiny_chat_model_path: Path
    ) -> None:
        from transformers import AutoTokenizer

        from app.chat import with_reply
        from app.labeling.demonstrations import reply_tokens

        tok = AutoTokenizer.from_pretrained(tiny_chat_model_path)
        reply = "Red, and then green."
        text = tok.apply_chat_template(with_reply(CONVERSATION, reply), tokenize=False)  # type: ignore[arg-type]
        expected = len(tok(text, add_special_tokens=False).input_ids)
        assert reply_tokens(CONVERSATION, reply, str(tiny_chat_model_path)) == expected  # type: ignore[arg-type]
        policy = make_model_version(session)
        policy.path = str(tiny_chat_model_path)
        _demo_set(session)
        session.execute(update(PromptSet).values(policy_version_id=policy.id))
        h = _token(session)
        aid = _next(client, h)["assignment_id"]
        settings = client.app.state.settings  # type: ignore[attr-defined]
        client.app.state.settings = settings.model_copy(update={"max_demonstration_tokens": expected - 1})  # type: ignore[attr-defined]
        over = _post(client, h, aid, {"reply": reply})
        assert over.status_code == 422
        assert over.json()["detail"][0]["field"] == "reply"
        assert (
            f"is {expected} tokens after the chat template; at most {expected - 1}"
            in over.json()["detail"][0]["message"]
        )
        client.app.state.settings = settings.model_copy(update={"max_demonstration_tokens": expected})  # type: ignore[attr-defined]
        ok = _post(client, h, aid, {"reply": reply})
        assert ok.status_code == 200 and ok.json()["token_count"] == expected
