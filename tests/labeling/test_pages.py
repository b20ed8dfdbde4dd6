"""The /label page, its form posts, the history page and the guidelines."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.labeling import service as labeling
from app.labeling.models import Annotation, Assignment, Guideline, Task
from tests.factories import chat, csrf_of, login, make_model_version, make_prompt_set, make_task, make_user


def _assignment_id(html: str) -> int:
    match = re.search(r'action="/label/(\d+)"', html)
    assert match, "no labeling form on the page"
    return int(match.group(1))


def _fields(task, ranks: list[str], ratings: list[str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    data = {}
    for c, r, g in zip(task.completions, ranks, ratings, strict=True):
        data[f"rank-{c.id}"] = r
        data[f"rating-{c.id}"] = g
    return data


def _one_open_task(client: TestClient, session: Session, *, k: int, **task: Any) -> tuple[Task, str, int]:
    """A labeler logged in, with one open task of a set of k completions on /label: the task,
    the CSRF token and the assignment id."""
    made = make_task(session, prompt_set=make_prompt_set(session, k=k), **task)
    csrf = login(client, make_user(session))
    return made, csrf, _assignment_id(client.get("/label").text)


class TestLabelPage:
    def test_shows_the_task_escaped_with_letters_flags_and_keys(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        ps = make_prompt_set(session, k=3, flags=["gives harmful advice"])
        demo = make_model_version(session, is_demo=True)
        make_task(
            session,
            prompt_set=ps,
            policy=demo,
            prompt="<b>bold?</b>\n    kept  spaces",
            completions=["<img src=x onerror=alert(1)>", "two", "three"],
        )
        login(client, user)
        html = client.get("/label").text
        assert "&lt;b&gt;bold?&lt;/b&gt;\n    kept  spaces</div>" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
        for letter in "ABC":
            assert f'id="out-{letter}"' in html
        assert "1 = worst, 7 = best" in html and "gives harmful advice" in html
        assert "demo model" in html and "Task 1 of 1" in html
        assert "/static/vendor/sortable-1.15.7.min.js" in html
        assert "<kbd>j</kbd>" in html and "<kbd>?</kbd>" in html  # the keyboard map is on the page

    def test_form_submit_stores_the_annotation_and_the_next_task_loads(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        ps = make_prompt_set(session, k=3)
        first = make_task(session, prompt_set=ps)
        make_task(session, prompt_set=ps, prompt="The second prompt")
        csrf = login(client, user)
        aid = _assignment_id(client.get("/label").text)
        data = {
            "csrf_token": csrf,
            **_fields(first, ["1", "1", "3"], ["6", "6", "2"]),
            f"flags-{first.completions[2].id}": ps.flags[0],
            "notes": "B rambles",
            f"note-{first.completions[2].id}": "too long",
            "time_spent_ms": "9" * 5000,
        }
        r = client.post(f"/label/{aid}", data=data)  # an absurd client time: the server's is kept
        assert r.status_code == 200 and "The second prompt" in r.text and "Task 2 of 2" in r.text
        ann = session.scalars(select(Annotation)).one()
        assert sorted(i.rank for i in ann.items) == [1, 1, 2]
        shown = "ABC"[session.get(Assignment, aid).display_order.index(first.completions[2].id)]  # type: ignore[union-attr]
        assert ann.notes == f"B rambles\n{shown}: too long"  # per-output notes, by the letter seen
        assert [i.flags for i in ann.items if i.completion_id == first.completions[2].id] == [[ps.flags[0]]]

    def test_a_reload_shows_the_same_task_and_a_late_submit_to_a_full_task_is_refused(
        self, client: TestClient, session: Session
    ) -> None:
        user, other = make_user(session), make_user(session)
        task = make_task(session, prompt_set=make_prompt_set(session, k=2, overlap=1))
        csrf = login(client, user)
        aid = _assignment_id(client.get("/label").text)
        assert _assignment_id(client.get("/label").text) == aid
        # The lease runs out and someone else labels the task.
        a = session.get(Assignment, aid)
        a.lease_expires_at = a.created_at - timedelta(seconds=1)  # type: ignore[union-attr]
        session.flush()
        b = labeling.next_assignment(session=session, user=other, lease_minutes=30)
        assert b is not None and b.task_id == task.id
        labeling.submit(
            session=session,
            assignment=b,
            ranks={str(c.id): n + 1 for n, c in enumerate(task.completions)},
            ratings={str(c.id): 5 for c in task.completions},
        )
        session.flush()
        r = client.post(f"/label/{aid}", data={"csrf_token": csrf, **_fields(task, ["1", "2"], ["6", "3"])})
        assert r.status_code == 409 and "already has all the labels it needs" in r.text
        assert session.scalar(select(func.count()).select_from(Annotation)) == 1

    def test_a_bad_form_is_shown_again_with_the_error_and_the_values(
        self, client: TestClient, session: Session
    ) -> None:
        task, csrf, aid = _one_open_task(client, session, k=3)
        r = client.post(
            f"/label/{aid}", data={"csrf_token": csrf, **_fields(task, ["1", "2", ""], ["5", "9", "4"])}
        )
        assert r.status_code == 422 and "ranks" in r.text
        assert f'name="rank-{task.completions[1].id}" min="1" max="3" inputmode="numeric" value="2"' in r.text
        assert session.scalar(select(func.count()).select_from(Annotation)) == 0

    def test_inconsistent_form_needs_the_confirmation_flag(
        self, client: TestClient, session: Session
    ) -> None:
        task, csrf, aid = _one_open_task(client, session, k=2)
        data = {"csrf_token": csrf, **_fields(task, ["1", "2"], ["2", "6"])}
        assert client.post(f"/label/{aid}", data=data).status_code == 422
        r = client.post(f"/label/{aid}", data={**data, "confirm_inconsistent": "1"}, follow_redirects=False)
        assert r.status_code == 303
        assert session.scalars(select(Annotation)).one().inconsistency_confirmed is True

    def test_skip_with_a_reason(self, client: TestClient, session: Session) -> None:
        _, csrf, aid = _one_open_task(client, session, k=2)
        bad = client.post(f"/label/{aid}/skip", data={"csrf_token": csrf, "reason": ""})
        assert bad.status_code == 422
        r = client.post(
            f"/label/{aid}/skip", data={"csrf_token": csrf, "reason": "unclear", "time_spent_ms": "9" * 5000}
        )  # no 500
        assert r.status_code == 200 and "Nothing to label right now" in r.text
        assert session.scalars(select(Annotation)).one().skip_reason == "unclear"
        assert session.get(Assignment, aid).state == "skipped"  # type: ignore[union-attr]

    def test_needs_the_labeler_role_and_a_csrf_token(self, client: TestClient, session: Session) -> None:
        assert client.get("/label", follow_redirects=False).headers["location"].startswith("/login")
        make_task(session, prompt_set=make_prompt_set(session, k=2))
        researcher = make_user(session, role="researcher")
        login(client, researcher)
        assert client.get("/label").status_code == 403
        client.cookies.clear()
        login(client, make_user(session))
        aid = _assignment_id(client.get("/label").text)
        assert client.post(f"/label/{aid}/skip", data={"reason": "unclear"}).status_code == 403
        csrf = csrf_of(client)
        for url in (f"/label/{2**40}", f"/label/{2**40}/skip"):  # no 500 on PostgreSQL
            assert client.post(url, data={"csrf_token": csrf, "reason": "other"}).status_code == 404

    def test_a_conversation_shows_its_turns_escaped_and_its_history_row(
        self, client: TestClient, session: Session
    ) -> None:
        user = make_user(session)
        conv = chat("Hi <script>x()</script>", "Hello & welcome.", "Bye?", system="Be brief. <i>system</i>")
        task = make_task(session, prompt_set=make_prompt_set(session, k=2), messages=conv)
        csrf = login(client, user)
        html = client.get("/label").text
        assert '<details id="turn-0">' in html and "Be brief. &lt;i&gt;system&lt;/i&gt;" in html
        assert "Hi &lt;script&gt;x()&lt;/script&gt;" in html and "<script>x()" not in html
        assert "Hello &amp; welcome." in html
        assert re.search(r'id="prompt-text"[^>]*>Bye\?</div>', html)
        roles = re.findall(r'<li class="turn turn-(\w+)', html)
        assert roles == ["system", "user", "assistant", "user"]
        aid = _assignment_id(html)
        client.post(f"/label/{aid}", data={"csrf_token": csrf, **_fields(task, ["1", "2"], ["6", "3"])})
        history = client.get("/label/history").text
        assert "User: Hi &lt;script&gt;" in history and "<script>x()" not in history

    def test_history_page(self, client: TestClient, session: Session) -> None:
        task, csrf, aid = _one_open_task(client, session, k=2, prompt="History prompt")
        client.post(f"/label/{aid}", data={"csrf_token": csrf, **_fields(task, ["1", "2"], ["6", "3"])})
        html = client.get("/label/history").text
        assert "<strong>1</strong> submitted" in html and "History prompt" in html
        assert "A &gt; B" in html or "B &gt; A" in html


class TestGuidelines:
    def test_admin_saves_versions_rendered_safely_and_annotations_record_the_version(
        self, client: TestClient, session: Session
    ) -> None:
        admin = make_user(session, role="admin")
        csrf = login(client, admin)
        for body in ("# Rules v1", "# Rules\n\n**Rank** honestly. <script>alert(1)</script>"):
            assert (
                client.post(
                    "/guidelines", data={"csrf_token": csrf, "body": body}, follow_redirects=False
                ).status_code
                == 303
            )
        html = client.get("/guidelines").text
        assert "v2" in html and "<strong>Rank</strong>" in html
        assert "<script>alert" not in html and "&lt;script&gt;" in html
        assert "Rules v1" in client.get("/guidelines?version=1").text
        task = make_task(session, prompt_set=make_prompt_set(session, k=2))
        page = client.get("/label").text  # admins may label too
        assert "<strong>Rank</strong>" in page  # the guidelines panel beside the task
        client.post(
            f"/label/{_assignment_id(page)}",
            data={"csrf_token": csrf, **_fields(task, ["1", "2"], ["6", "3"])},
        )
        assert session.scalars(select(Annotation)).one().guideline_version == 2

    def test_labelers_read_but_cannot_edit(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session))
        assert client.get("/guidelines").status_code == 200
        r = client.post("/guidelines", data={"csrf_token": csrf_of(client), "body": "x"})
        assert r.status_code == 403

    def test_empty_guidelines_are_refused_and_no_version_is_saved(
        self, client: TestClient, session: Session
    ) -> None:
        csrf = login(client, make_user(session, role="admin"))
        r = client.post("/guidelines", data={"csrf_token": csrf, "body": "  \n "})
        assert r.status_code == 422 and "cannot be empty" in r.text
        r = client.post("/guidelines", data={"csrf_token": csrf, "body": "# Rules\x00"})
        assert r.status_code == 422 and "NUL" in r.text  # PostgreSQL cannot store it: no 500
        assert session.scalar(select(func.count()).select_from(Guideline)) == 0
