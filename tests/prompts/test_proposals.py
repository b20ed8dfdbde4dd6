"""Prompts written by labelers: the form and the API (the upload's rules, each refusal naming its
field), the admins' queue (accept into a set of either kind, duplicates refused by name, edit,
reject with a reason), the labeler's history, and the per-set settings."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.models import User
from app.labeling.models import Task
from app.prompts.models import Prompt, PromptProposal, PromptSet
from app.runs.models import Job
from tests.factories import bearer, chat, count_rows, login, make_prompt_row, make_prompt_set, make_user

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def open_set(session: Session, **kw: Any) -> PromptSet:
    ps = make_prompt_set(session, **kw)
    ps.allow_proposals = True
    session.flush()
    return ps


def api_as(session: Session, user: User) -> dict[str, str]:
    return bearer(auth.create_token(session=session, user=user).token)


def propose(client: TestClient, headers: dict[str, str], ps: PromptSet, **body: Any):  # type: ignore[no-untyped-def]
    payload = {
        "prompt_set_id": ps.id,
        "messages": [{"role": "user", "content": "Write a limerick about a cat."}],
        "category": "generation",
        **body,
    }
    return client.post("/api/v1/prompts/proposals", headers=headers, json=payload)


def send(client: TestClient, url: str, csrf: str, *, htmx: bool = False, **data: Any):  # type: ignore[no-untyped-def]
    """A browser form post (CSRF token included), redirects not followed."""
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(url, data={"csrf_token": csrf, **data}, headers=headers, follow_redirects=False)


class TestProposeOverTheApi:
    def test_a_multi_turn_conversation_with_a_system_message_is_stored_as_written(
        self, client: TestClient, session: Session
    ) -> None:
        labeler = make_user(session)
        ps = open_set(session)
        messages = chat("Name a planet.  ", "Mars.", "Another?", system="You are terse.")
        r = propose(client, api_as(session, labeler), ps, messages=messages, category="chat")
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "pending" and body["category"] == "chat"
        assert body["messages"][1] == {"role": "user", "content": "Name a planet."}  # normalised
        stored = session.get(PromptProposal, body["id"])
        assert stored is not None and stored.user_id == labeler.id and len(stored.messages) == 4
        assert count_rows(session, Prompt) == 0  # nothing reaches a set before review

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"category": "poetry"}, "category"),
            ({"messages": [{"role": "bot", "content": "Hi"}]}, "messages[0].role"),
            ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
            ({"messages": []}, "messages"),
            (
                {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
                "messages[1].role",
            ),
            (
                {"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be kind"}]},
                "messages[1].role",
            ),
            ({"messages": [{"role": "user", "content": "a\u0000b"}]}, "messages[0].content"),
            ({"messages": "just text"}, "messages"),
            ({"prompt_set_id": 2**40}, "prompt_set_id"),
        ],
    )
    def test_a_refusal_names_the_field_and_stores_nothing(
        self, client: TestClient, session: Session, body: dict[str, Any], field: str
    ) -> None:
        ps = open_set(session)
        r = propose(client, api_as(session, make_user(session)), ps, **body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == field, r.json()
        assert count_rows(session, PromptProposal) == 0

    def test_a_set_that_does_not_allow_written_prompts_refuses_them(
        self, client: TestClient, session: Session
    ) -> None:
        closed = make_prompt_set(session)
        r = propose(client, api_as(session, make_user(session)), closed)
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "prompt_set_id"
        assert count_rows(session, PromptProposal) == 0

    def test_the_token_limit_of_uploads_applies(self, client: TestClient, session: Session) -> None:
        client.app.state.settings = client.app.state.settings.model_copy(update={"max_prompt_tokens": 8})  # type: ignore[attr-defined]
        ps = open_set(session)
        r = propose(
            client,
            api_as(session, make_user(session)),
            ps,
            messages=[{"role": "user", "content": "word " * 40}],
        )
        assert r.status_code == 422
        problem = r.json()["detail"][0]
        assert problem["field"] == "messages" and "over the limit of 8" in problem["message"]

    def test_labelers_see_only_their_own_proposals(self, client: TestClient, session: Session) -> None:
        ps = open_set(session)
        me, other = make_user(session), make_user(session)
        propose(client, api_as(session, other), ps)
        mine = propose(client, api_as(session, me), ps, category="rewrite").json()
        listed = client.get("/api/v1/prompts/proposals", headers=api_as(session, me)).json()
        assert [p["id"] for p in listed] == [mine["id"]]

    def test_the_api_is_in_the_openapi_page(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        op = spec["paths"]["/api/v1/prompts/proposals"]["post"]
        assert "requestBody" in op and "201" in op["responses"]


class TestWritePage:
    def test_the_form_lists_only_open_sets_and_a_conversation_is_sent(
        self, client: TestClient, session: Session
    ) -> None:
        labeler = make_user(session)
        ps = open_set(session, name="open for writing")
        make_prompt_set(session, name="closed set")
        csrf = login(client, labeler)
        page = client.get("/prompts/write")
        assert page.status_code == 200 and "open for writing" in page.text and "closed set" not in page.text
        r = send(
            client,
            "/prompts/write",
            csrf,
            prompt_set_id=str(ps.id),
            category="brainstorming",
            system="Be brief.",
            role=["user", "assistant", "user"],
            content=["Ideas for a party?", "A picnic.", "More, indoors?"],
        )
        assert r.status_code == 303, r.text
        stored = session.scalars(select(PromptProposal)).one()
        assert [m["role"] for m in stored.messages] == ["system", "user", "assistant", "user"]
        assert "waits for review" in client.get(r.headers["location"]).text

    def test_a_refused_form_names_the_field_and_keeps_what_was_written(
        self, client: TestClient, session: Session
    ) -> None:
        ps = open_set(session)
        csrf = login(client, make_user(session))
        r = send(
            client,
            "/prompts/write",
            csrf,
            prompt_set_id=str(ps.id),
            category="chat",
            role=["user", "assistant"],
            content=["Kept text " + HOSTILE, "An answer"],
        )
        assert r.status_code == 422
        assert "messages[1].role" in r.text and "last message must be from the user" in r.text
        assert "Kept text &lt;script&gt;" in r.text and HOSTILE not in r.text
        assert count_rows(session, PromptProposal) == 0


def pending(session: Session, ps: PromptSet, text: str = "Summarise the plot of Hamlet.") -> PromptProposal:
    p = PromptProposal(
        user_id=make_user(session).id,
        prompt_set_id=ps.id,
        messages=[{"role": "user", "content": text}],
        category="summarization",
    )
    session.add(p)
    session.flush()
    return p


def to_review(client: TestClient, session: Session, *text: str) -> tuple[PromptSet, PromptProposal, str]:
    """A pending proposal (of `text`, or the default) for an open set, and an admin logged in to
    review it: the set, the proposal and the admin's CSRF token."""
    ps = open_set(session)
    p = pending(session, ps, *text)
    return ps, p, login(client, make_user(session, role="admin"))


def accept_edited(client: TestClient, csrf: str, p: PromptProposal, ps: PromptSet, **fields: Any) -> Any:
    """The review form's accept, into `ps`, with the admin's edit of the conversation in `fields`."""
    return send(client, f"/proposals/{p.id}/accept", csrf, prompt_set_id=str(ps.id), edited="1", **fields)


class TestReview:
    def test_accept_into_a_ranking_set_adds_the_prompt_and_queues_its_sampling(
        self, client: TestClient, session: Session
    ) -> None:
        ps, p, csrf = to_review(client, session)
        assert "Summarise the plot of Hamlet." in client.get("/proposals").text
        r = send(client, f"/proposals/{p.id}/accept", csrf, prompt_set_id=str(ps.id))
        assert r.status_code == 303, r.text
        session.refresh(p)
        prompt = session.get(Prompt, p.prompt_id)
        assert p.status == "accepted" and prompt is not None and prompt.prompt_set_id == ps.id
        assert prompt.meta["category"] == "summarization" and prompt.meta["proposal_id"] == p.id
        job = session.scalars(select(Job).where(Job.kind == "sample")).one()
        assert job.params == {"prompt_set_id": ps.id} and job.status == "queued"

    def test_accept_into_a_demonstration_set_opens_its_task_at_once(
        self, client: TestClient, session: Session
    ) -> None:
        written_for = open_set(session)
        demo = make_prompt_set(session)
        demo.kind = "demonstration"
        p = pending(session, written_for)
        csrf = login(client, make_user(session, role="admin"))
        r = send(client, f"/proposals/{p.id}/accept", csrf, htmx=True, prompt_set_id=str(demo.id))
        assert r.status_code == 200 and "accepted" in r.text and f'id="proposal-{p.id}"' in r.text
        task = session.scalars(select(Task)).one()
        assert task.status == "open" and task.prompt_set_id == demo.id and task.completions == []
        assert count_rows(session, Job) == 0

    def test_a_duplicate_is_refused_naming_the_existing_prompt(
        self, client: TestClient, session: Session
    ) -> None:
        ps = open_set(session, name="holds it")
        existing = make_prompt_row(ps.id, "Summarise the plot of Hamlet.")
        session.add(existing)
        session.flush()
        p = pending(session, ps, "  Summarise the plot of Hamlet.\r\n")
        csrf = login(client, make_user(session, role="admin"))
        r = send(client, f"/proposals/{p.id}/accept", csrf, prompt_set_id=str(ps.id))
        assert r.status_code == 409
        assert f"prompt {existing.id}" in r.text and "holds it" in r.text
        htmx = send(client, f"/proposals/{p.id}/accept", csrf, htmx=True, prompt_set_id=str(ps.id))
        assert f"prompt {existing.id}" in htmx.text and 'role="alert"' in htmx.text
        session.refresh(p)
        assert p.status == "pending" and count_rows(session, Prompt) == 1 and count_rows(session, Job) == 0

    def test_edit_then_accept_keeps_what_the_labeler_wrote(
        self, client: TestClient, session: Session
    ) -> None:
        ps, p, csrf = to_review(client, session, "summarise hamlet pls")
        page = client.get(f"/proposals/{p.id}")
        assert page.status_code == 200 and "summarise hamlet pls" in page.text
        system, asks = "Answer in three sentences.", "Summarise the plot of Hamlet."
        r = accept_edited(client, csrf, p, ps, system=system, role=["user"], content=[asks])
        assert r.status_code == 303, r.text
        session.refresh(p)
        prompt = session.get(Prompt, p.prompt_id)
        assert prompt is not None and prompt.meta["edited"] is True
        assert prompt.messages == [
            {"role": "system", "content": "Answer in three sentences."},
            {"role": "user", "content": "Summarise the plot of Hamlet."},
        ]
        assert p.messages == [{"role": "user", "content": "summarise hamlet pls"}]

    def test_an_edit_breaking_the_rules_is_refused_naming_the_field(
        self, client: TestClient, session: Session
    ) -> None:
        ps, p, csrf = to_review(client, session)
        r = accept_edited(client, csrf, p, ps, role=["user"], content=[""])
        assert r.status_code == 422 and "messages[0].content" in r.text
        session.refresh(p)
        assert p.status == "pending" and count_rows(session, Prompt) == 0

    def test_reject_needs_a_reason_and_the_labeler_sees_it_escaped(
        self, client: TestClient, session: Session
    ) -> None:
        ps = open_set(session)
        labeler = make_user(session)
        p = PromptProposal(
            user_id=labeler.id,
            prompt_set_id=ps.id,
            messages=[{"role": "user", "content": HOSTILE}],
            category="other",
        )
        session.add(p)
        session.flush()
        admin_client = client
        csrf = login(admin_client, make_user(session, role="admin"))
        queue = admin_client.get("/proposals").text
        assert HOSTILE not in queue and "&lt;script&gt;" in queue
        empty = send(admin_client, f"/proposals/{p.id}/reject", csrf, reason="  ")
        assert empty.status_code == 422 and "reason" in empty.text
        r = send(admin_client, f"/proposals/{p.id}/reject", csrf, reason="Not a task <b>at all</b>")
        assert r.status_code == 303
        session.refresh(p)
        assert p.status == "rejected" and p.reason == "Not a task <b>at all</b>" and p.reviewed_at is not None
        again = send(admin_client, f"/proposals/{p.id}/accept", csrf, prompt_set_id=str(ps.id))
        assert again.status_code == 409 and "already rejected" in again.text
        admin_client.cookies.clear()
        login(admin_client, labeler)
        history = admin_client.get("/label/history").text
        assert "rejected: Not a task &lt;b&gt;at all&lt;/b&gt;" in history and HOSTILE not in history
        assert "<title>Your labels · ranklab</title>" in history


class TestSetSettings:
    def test_the_set_page_shows_and_changes_train_on_and_allow_proposals(
        self, client: TestClient, session: Session
    ) -> None:
        ps = make_prompt_set(session)
        csrf = login(client, make_user(session, role="admin"))
        page = client.get(f"/sets/{ps.id}").text
        assert 'id="set-settings"' in page and "accepted or not yet reviewed" in page
        r = send(client, f"/sets/{ps.id}/settings", csrf, train_on="accepted", allow_proposals="1")
        assert r.status_code == 303
        session.refresh(ps)
        assert ps.train_on == "accepted" and ps.allow_proposals is True
        assert "labelers may write prompts for it: <strong>yes</strong>" in client.get(f"/sets/{ps.id}").text
        bad = send(client, f"/sets/{ps.id}/settings", csrf, train_on="some")
        assert bad.status_code == 422 and "train_on" in bad.text
        session.refresh(ps)
        assert ps.train_on == "accepted"
