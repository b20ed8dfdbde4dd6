"""Uploading in the browser and the API; the sets list with its live progress; cancel."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.prompts.models import Prompt, PromptSet
from app.runs.models import Job
from app.runs.params.sample import SAMPLE
from tests.factories import (
    bearer,
    login,
    make_model_version,
    make_prompt_row,
    make_prompt_set,
    make_task,
    make_user,
)

JL = "\n".join(json.dumps({"prompt": f"Question {i}?"}) for i in range(3)).encode()


def upload(
    client: TestClient,
    csrf: str,
    *,
    name: str = "web set",
    data: bytes = JL,
    filename: str = "p.jsonl",
    **form: str,
):  # type: ignore[no-untyped-def]
    return client.post(
        "/sets",
        data={"csrf_token": csrf, "name": name, **form},
        files={"file": (filename, data, "application/octet-stream")},
        follow_redirects=False,
    )


class TestUploadPage:
    def test_upload_creates_the_set_and_its_job_then_shows_it(
        self, client: TestClient, session: Session
    ) -> None:
        csrf = login(client, make_user(session, role="admin"))
        page = client.get("/sets/new")
        assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
        r = upload(
            client,
            csrf,
            k="5",
            overlap="2",
            temperature="0.7",
            max_new_tokens="32",
            flags="off topic\nrude\n",
        )
        assert r.status_code == 303, r.text
        ps = session.scalar(select(PromptSet).where(PromptSet.name == "web set"))
        assert ps is not None and (ps.k, ps.overlap) == (5, 2)
        assert ps.sampling["temperature"] == 0.7 and ps.sampling["max_new_tokens"] == 32
        assert ps.flags == ["off topic", "rude"]
        assert r.headers["location"] == f"/sets/{ps.id}"
        job = session.get(Job, ps.report["job_id"])
        assert job is not None and job.kind == "sample" and job.status == "queued"
        detail = client.get(f"/sets/{ps.id}").text
        assert "0 / 3 prompts sampled" in detail and "Question 1?" in detail
        assert f'hx-get="/sets/{ps.id}/progress"' in detail and "Cancel sampling" in detail
        listing = client.get("/sets").text
        assert "web set" in listing and "0 / 3 prompts sampled" in listing

    def test_bad_file_shows_every_problem_and_stores_nothing(
        self, client: TestClient, session: Session
    ) -> None:
        csrf = login(client, make_user(session, role="admin"))
        bad = b'{"prompt": ""}\n{"text": "x"}\n'
        r = upload(client, csrf, data=bad, k="12")
        assert r.status_code == 422
        assert "Nothing was imported" in r.text
        assert "p.jsonl, field &#39;k&#39;: K must be between 4 and 9, got 12" in r.text
        assert "p.jsonl, line 1, field &#39;prompt&#39;: empty or only whitespace" in r.text
        assert "p.jsonl, line 2, field &#39;prompt&#39;: missing" in r.text
        assert 'value="web set"' in r.text  # the form keeps what was typed
        assert session.scalar(select(func.count()).select_from(PromptSet)) == 0
        assert session.scalar(select(func.count()).select_from(Prompt)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0

    def test_a_number_field_that_is_not_a_number_is_named(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="admin"))
        r = upload(client, csrf, overlap="lots")
        assert r.status_code == 422
        assert "p.jsonl, field &#39;overlap&#39;: not a whole number: &#39;lots&#39;" in r.text

    def test_sampling_fields_come_from_the_sample_definition(
        self, client: TestClient, session: Session
    ) -> None:
        """The form's boxes, their ranges and what an empty box means are SAMPLE's (one definition)."""
        csrf = login(client, make_user(session, role="admin"))
        page = client.get("/sets/new").text
        for p in SAMPLE.fields:
            assert f'name="{p.name}"' in page and p.help in page
        assert 'name="top_k" type="number" value="0"' in page and 'max="100000"' in page
        r = upload(client, csrf, temperature="hot", top_k="")
        assert r.status_code == 422
        assert "p.jsonl, field &#39;temperature&#39;: a number from 0.01 to 5, not &#39;hot&#39;" in r.text
        assert session.scalar(select(func.count()).select_from(PromptSet)) == 0
        assert upload(client, csrf, max_new_tokens="12", top_k="").status_code == 303
        ps = session.scalars(select(PromptSet)).one()
        assert ps.sampling == {**SAMPLE.defaults, "max_new_tokens": 12}

    def test_prompts_and_model_text_are_escaped(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="admin"))
        r = upload(client, csrf, data=json.dumps({"prompt": "<script>alert(1)</script>"}).encode())
        assert r.status_code == 303
        page = client.get(r.headers["location"]).text
        assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page

    def test_labelers_cannot_upload(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="labeler"))
        assert upload(client, csrf).status_code == 403
        assert session.scalar(select(func.count()).select_from(PromptSet)) == 0


class TestProgressAndCancel:
    def test_progress_fragment_counts_open_tasks_and_badges_the_demo(
        self, client: TestClient, session: Session
    ) -> None:
        login(client, make_user(session, role="admin"))
        demo = make_model_version(session, is_demo=True, name="demo policy")
        ps = make_prompt_set(session, name="demo-ish")
        ps.policy_version_id = demo.id
        make_task(session, prompt_set=ps, policy=demo)
        session.add(make_prompt_row(ps.id, "not sampled yet"))
        session.flush()
        frag = client.get(f"/sets/{ps.id}/progress", headers={"HX-Request": "true"})
        assert frag.status_code == 200
        assert frag.text.lstrip().startswith('<div class="set-progress"')
        assert "1 / 2 prompts sampled" in frag.text and "<html" not in frag.text
        page = client.get(f"/sets/{ps.id}").text
        assert "demo model" in page and "These completions come from the demo model" in page

    def test_cancel_a_queued_job_from_the_page(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="admin"))
        r = upload(client, csrf)
        ps = session.scalar(select(PromptSet).where(PromptSet.name == "web set"))
        assert ps is not None
        r = client.post(f"/sets/{ps.id}/cancel", headers={"HX-Request": "true", "X-CSRF-Token": csrf})
        assert r.status_code == 200 and "cancelled" in r.text and "Sample the rest" in r.text
        job = session.get(Job, ps.report["job_id"])
        assert job is not None and job.status == "cancelled"
        session.refresh(ps)
        assert ps.status == "active"
        r = client.post(f"/sets/{ps.id}/resume", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        session.refresh(ps)
        assert ps.report["job_id"] != job.id and ps.status == "sampling"


class TestApi:
    def test_upload_list_and_refusal_over_the_api(self, client: TestClient, session: Session) -> None:
        admin = make_user(session, role="admin")
        h = bearer(auth.create_token(session=session, user=admin, name="t").token)
        r = client.post(
            "/api/v1/sets",
            headers=h,
            data={"name": "api set", "k": "4"},
            files={"file": ("p.csv", b"prompt\nOne\nOne\nTwo\n", "text/csv")},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["report"]["imported"] == 2 and body["report"]["duplicates"] == 1
        assert body["progress"]["total"] == 2 and body["progress"]["job"]["status"] == "queued"
        assert [s["name"] for s in client.get("/api/v1/sets", headers=h).json()] == ["api set"]
        bad = client.post(
            "/api/v1/sets",
            headers=h,
            data={"name": "api set"},
            files={"file": ("p.csv", b"prompt\n \n", "text/csv")},
        )
        assert bad.status_code == 422
        assert [p["text"] for p in bad.json()["detail"]] == [
            "p.csv, field 'name': a prompt set named 'api set' already exists; choose another name",
            "p.csv, line 2, field 'prompt': empty or only whitespace",
        ]
        assert {k: v for k, v in bad.json()["detail"][1].items() if k != "text"} == {
            "file": "p.csv",
            "line": 2,
            "field": "prompt",
            "message": "empty or only whitespace",
        }


class TestLiveFigures:
    def test_a_running_job_shows_rate_and_time_left(self, client: TestClient, session: Session) -> None:
        from datetime import timedelta

        from app.db import utcnow
        from app.prompts import sampling

        login(client, make_user(session, role="admin"))
        ps = make_prompt_set(session, name="running")
        job = sampling.start_sampling(session=session, prompt_set=ps)
        job.status, job.started_at = "running", utcnow() - timedelta(seconds=10)
        for _ in range(2):
            task = make_task(session, prompt_set=ps)
            task.sampling_job_id = job.id
        for i in range(4):
            session.add(make_prompt_row(ps.id, f"waiting {i}"))
        session.flush()
        prog = sampling.progress(session=session, prompt_set=ps)
        assert (prog.done, prog.total) == (2, 6)
        assert prog.rate is not None and 0.15 < prog.rate <= 0.2
        assert prog.eta_seconds is not None and 19 < prog.eta_seconds < 27
        frag = client.get(f"/sets/{ps.id}/progress", headers={"HX-Request": "true"}).text
        assert "2 / 6 prompts sampled" in frag and "prompts/s" in frag and " s left" in frag
        assert 'hx-trigger="every 2s"' in frag

    def test_a_finished_job_stops_the_polling(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session, role="admin"))
        ps = make_prompt_set(session, name="done")
        make_task(session, prompt_set=ps)
        frag = client.get(f"/sets/{ps.id}/progress", headers={"HX-Request": "true"}).text
        assert "1 / 1 prompts sampled" in frag and "hx-trigger" not in frag

    def test_the_upload_limit_applies_in_the_browser(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="admin"))
        app = client.app
        app.state.settings = app.state.settings.model_copy(update={"max_upload_mb": 0.00005})
        r = upload(client, csrf, data=JL * 10)
        assert r.status_code == 413
        assert "p.jsonl: the file is larger than the 5e-05 MB limit (RANKLAB_MAX_UPLOAD_MB)" in r.text
        assert session.scalar(select(func.count()).select_from(PromptSet)) == 0


def test_the_web_app_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, app.main, app.prompts.views, app.prompts.service, app.prompts.upload, "
        "app.prompts.commands, app.runs.policies; sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
