"""/demonstrations: filters, accept, reject with a reason, edit keeping both versions, bulk
accept, hostile text escaped; and the per-labeler figures on /quality. Demonstrations are made
as rows (task, assignment, annotation, demonstration), as a submission leaves them."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.auth.models import User
from app.db import utcnow
from app.exports.filters import pseudonym
from app.labeling.models import Annotation, Assignment, Demonstration, Task
from app.prompts.models import Prompt, PromptSet
from tests.factories import bearer, login, make_prompt_row, make_prompt_set, make_user

HOSTILE = '<script>alert("x")</script>'


def demo_set(session: Session, name: str | None = None) -> PromptSet:
    ps = make_prompt_set(session, name=name)
    ps.kind = "demonstration"
    session.flush()
    return ps


def make_demo(
    session: Session,
    *,
    prompt_set: PromptSet,
    user: User,
    reply: str = "A kind reply.",
    prompt: str | None = None,
    time_spent_ms: int = 40_000,
    draft_used: bool = False,
    edit_distance: int | None = None,
    status: str = "unreviewed",
) -> Demonstration:
    p: Prompt = make_prompt_row(prompt_set.id, prompt or f"Prompt for {reply[:20]} {utcnow().isoformat()}")
    session.add(p)
    session.flush()
    task = Task(prompt_id=p.id, prompt_set_id=prompt_set.id, status="open", label_count=1)
    session.add(task)
    session.flush()
    a = Assignment(
        task_id=task.id,
        user_id=user.id,
        state="submitted",
        lease_expires_at=utcnow() + timedelta(minutes=30),
        finished_at=utcnow(),
    )
    session.add(a)
    session.flush()
    ann = Annotation(assignment_id=a.id, task_id=task.id, user_id=user.id, time_spent_ms=time_spent_ms)
    session.add(ann)
    session.flush()
    d = Demonstration(
        annotation_id=ann.id,
        reply=reply,
        draft_used=draft_used,
        edit_distance=edit_distance,
        token_count=len(reply.split()),
        review_status=status,
    )
    session.add(d)
    session.flush()
    return d


def secret(client: TestClient) -> str:
    return str(client.app.state.settings.secret_key)  # type: ignore[attr-defined]


class TestList:
    def test_filters_by_set_labeler_and_status(self, client: TestClient, session: Session) -> None:
        a, b = make_user(session), make_user(session)
        s1, s2 = demo_set(session, "demo one"), demo_set(session, "demo two")
        make_demo(session, prompt_set=s1, user=a, reply="alpha reply")
        make_demo(session, prompt_set=s2, user=a, reply="beta reply", status="accepted")
        make_demo(session, prompt_set=s1, user=b, reply="gamma reply", draft_used=True, edit_distance=17)
        login(client, make_user(session, role="researcher"))

        def shown(query: str = "") -> set[str]:
            page = client.get("/demonstrations" + query)
            assert page.status_code == 200, page.text
            return {w for w in ("alpha reply", "beta reply", "gamma reply") if w in page.text}

        assert shown() == {"alpha reply", "beta reply", "gamma reply"}
        assert shown(f"?set={s1.id}") == {"alpha reply", "gamma reply"}
        assert shown(f"?labeler={a.id}") == {"alpha reply", "beta reply"}
        assert shown("?status=accepted") == {"beta reply"}
        assert shown(f"?set={s1.id}&labeler={b.id}&status=unreviewed") == {"gamma reply"}
        page = client.get("/demonstrations").text
        assert pseudonym(b.id, secret(client)) in page and b.username not in page
        assert "edit distance 17" in page and "demo two" in page
        assert client.get("/demonstrations?set=abc").status_code == 422
        assert client.get(f"/demonstrations?set={2**40}").status_code == 422

    def test_hostile_text_is_shown_as_text(self, client: TestClient, session: Session) -> None:
        make_demo(
            session, prompt_set=demo_set(session), user=make_user(session), reply=HOSTILE, prompt=HOSTILE
        )
        login(client, make_user(session, role="researcher"))
        page = client.get("/demonstrations").text
        assert HOSTILE not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


class TestReview:
    def test_accept_and_reject_with_a_reason_over_htmx(self, client: TestClient, session: Session) -> None:
        d = make_demo(session, prompt_set=demo_set(session), user=make_user(session))
        reviewer = make_user(session, role="researcher")
        csrf = login(client, reviewer)
        hx = {"HX-Request": "true"}
        r = client.post(f"/demonstrations/{d.id}/accept", data={"csrf_token": csrf}, headers=hx)
        assert (
            r.status_code == 200 and f'id="demo-{d.id}"' in r.text and "<strong>accepted</strong>" in r.text
        )
        session.refresh(d)
        assert d.review_status == "accepted" and d.reviewed_by_id == reviewer.id
        empty = client.post(
            f"/demonstrations/{d.id}/reject", data={"csrf_token": csrf, "reason": " "}, headers=hx
        )
        assert "reason" in empty.text and 'role="alert"' in empty.text
        session.refresh(d)
        assert d.review_status == "accepted"
        r = client.post(
            f"/demonstrations/{d.id}/reject",
            data={"csrf_token": csrf, "reason": "Wrong <i>facts</i>"},
            headers=hx,
        )
        assert "rejected" in r.text and "Wrong &lt;i&gt;facts&lt;/i&gt;" in r.text
        session.refresh(d)
        assert d.review_status == "rejected" and d.review_reason == "Wrong <i>facts</i>"
        plain = client.post(f"/demonstrations/{d.id}/reject", data={"csrf_token": csrf, "reason": ""})
        assert plain.status_code == 422 and "reason" in plain.text

    def test_an_edit_keeps_both_versions_and_training_uses_the_reviewers(
        self, client: TestClient, session: Session
    ) -> None:
        d = make_demo(session, prompt_set=demo_set(session), user=make_user(session), reply="teh answer is 4")
        csrf = login(client, make_user(session, role="admin"))
        r = client.post(
            f"/demonstrations/{d.id}/edit",
            data={"csrf_token": csrf, "reply": "The answer is 4.\r\n"},
            headers={"HX-Request": "true"},
        )
        assert r.status_code == 200
        assert "Reviewer's version" in r.text and "teh answer is 4" in r.text and "The answer is 4." in r.text
        session.refresh(d)
        assert d.reply == "teh answer is 4" and d.edited_reply == "The answer is 4."
        assert d.final_reply == "The answer is 4." and d.review_status == "accepted"
        page = client.get("/demonstrations").text
        assert "teh answer is 4" in page and "The answer is 4." in page
        empty = client.post(f"/demonstrations/{d.id}/edit", data={"csrf_token": csrf, "reply": "  "})
        assert empty.status_code == 422 and "reply" in empty.text
        session.refresh(d)
        assert d.edited_reply == "The answer is 4."

    def test_bulk_accept_takes_only_the_unreviewed_ticked_ones(
        self, client: TestClient, session: Session
    ) -> None:
        ps, user = demo_set(session), make_user(session)
        one, two = make_demo(session, prompt_set=ps, user=user), make_demo(session, prompt_set=ps, user=user)
        rejected = make_demo(session, prompt_set=ps, user=user, status="rejected")
        untouched = make_demo(session, prompt_set=ps, user=user)
        csrf = login(client, make_user(session, role="researcher"))
        r = client.post(
            "/demonstrations/accept",
            data={"csrf_token": csrf, "ids": [str(one.id), str(two.id), str(rejected.id)]},
            follow_redirects=False,
        )
        assert r.status_code == 303
        for d in (one, two, rejected, untouched):
            session.refresh(d)
        assert [d.review_status for d in (one, two, rejected, untouched)] == [
            "accepted",
            "accepted",
            "rejected",
            "unreviewed",
        ]
        bad = client.post("/demonstrations/accept", data={"csrf_token": csrf, "ids": ["x1"]})
        assert bad.status_code == 422 and "ids" in bad.text

    def test_labelers_may_not_review(self, client: TestClient, session: Session) -> None:
        d = make_demo(session, prompt_set=demo_set(session), user=make_user(session))
        csrf = login(client, make_user(session))
        assert client.get("/demonstrations").status_code == 403
        assert client.post(f"/demonstrations/{d.id}/accept", data={"csrf_token": csrf}).status_code == 403
        session.refresh(d)
        assert d.review_status == "unreviewed"


class TestQuality:
    def test_per_labeler_acceptance_rate_median_time_and_length(
        self, client: TestClient, session: Session
    ) -> None:
        ps, a, b = demo_set(session), make_user(session), make_user(session)
        make_demo(session, prompt_set=ps, user=a, reply="x" * 10, time_spent_ms=10_000, status="accepted")
        make_demo(session, prompt_set=ps, user=a, reply="x" * 30, time_spent_ms=20_000, status="accepted")
        make_demo(session, prompt_set=ps, user=a, reply="x" * 50, time_spent_ms=60_000, status="rejected")
        make_demo(session, prompt_set=ps, user=a, reply="x" * 70, time_spent_ms=90_000)
        make_demo(session, prompt_set=ps, user=b, reply="y" * 5, time_spent_ms=5_000)
        researcher = make_user(session, role="researcher")
        body = client.get(
            "/api/v1/quality", headers=bearer(auth.create_token(session=session, user=researcher).token)
        ).json()
        by = {d["labeler"]: d for d in body["demonstrations"]}
        fa, fb = by[pseudonym(a.id, secret(client))], by[pseudonym(b.id, secret(client))]
        assert fa["demonstrations"] == 4 and (fa["accepted"], fa["rejected"]) == (2, 1)
        assert fa["acceptance_rate"] == 2 / 3
        assert fa["median_time_s"] == 40.0 and fa["median_reply_chars"] == 40
        assert fb["acceptance_rate"] is None and fb["median_reply_chars"] == 5
        login(client, researcher)
        page = client.get("/quality").text
        assert (
            'id="demo-stats"' in page
            and "67%" in page
            and "40 characters" in page
            and "none reviewed" in page
        )
