"""The runs pages and the jobs API: access, listing, one run's page, cancel with and without CSRF."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jinja2 import ChoiceLoader, DictLoader
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth
from app.db import utcnow
from app.runs import service as jobs
from app.runs import views
from app.runs.models import Job, JobStatus
from app.web import templates
from tests.factories import bearer, login, make_job, make_user
from trainer.runner import JobContext, register
from trainer.worker import Worker


def _running(session: Session, job: Job, *, progress: float = 0.5, minutes_ago: float = 10) -> Job:
    claimed = jobs.claim(session=session, worker_id="test-worker")
    assert claimed is not None and claimed.id == job.id
    job.started_at = utcnow() - timedelta(minutes=minutes_ago)
    job.progress = progress
    job.message = "step 5 of 10"
    session.flush()
    return job


def _reload(session: Session, job: Job) -> Job:
    session.expire_all()
    fresh = session.get(Job, job.id)
    assert fresh is not None
    return fresh


class TestAccess:
    @pytest.mark.parametrize("role", ["researcher", "admin"])
    def test_researcher_and_admin_see_every_page(
        self, client: TestClient, session: Session, role: str
    ) -> None:
        job = make_job(session, kind="train_reward")
        login(client, make_user(session, role=role))
        for path in ("/runs", f"/runs/{job.id}", "/models"):
            r = client.get(path)
            assert r.status_code == 200, (path, r.text)
            assert "<html" in r.text

    def test_labeler_is_refused(self, client: TestClient, session: Session) -> None:
        job = make_job(session)
        csrf = login(client, make_user(session, role="labeler"))
        for path in ("/runs", f"/runs/{job.id}", "/models"):
            assert client.get(path).status_code == 403, path
        r = client.post(f"/runs/{job.id}/cancel", data={"csrf_token": csrf})
        assert r.status_code == 403
        assert _reload(session, job).status == JobStatus.queued

    def test_anonymous_is_sent_to_login(self, client: TestClient, session: Session) -> None:
        job = make_job(session)
        for path in ("/runs", f"/runs/{job.id}", "/models"):
            r = client.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
        assert client.get("/api/v1/jobs").status_code == 401

    def test_api_refuses_a_labeler_token(self, client: TestClient, session: Session) -> None:
        token = auth.create_token(session=session, user=make_user(session), name="t").token
        assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 403
        assert client.get("/api/v1/models", headers=bearer(token)).status_code == 403

    def test_unknown_job_is_404(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session, role="researcher"))
        assert client.get("/runs/999999").status_code == 404


class TestRunsList:
    def test_lists_jobs_with_who_counts_and_filters(
        self, client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        alice = make_user(session, role="researcher")
        sample = make_job(session, kind="sample", created_by_id=alice.id)
        reward = make_job(session, kind="train_reward")
        jobs.request_cancel(session=session, job=reward)  # queued -> cancelled at once
        login(client, alice)

        page = client.get("/runs").text
        assert f'data-job="{sample.id}"' in page and f'data-job="{reward.id}"' in page
        assert alice.username in page
        assert re.search(r"queued: <strong>1</strong>", page)
        assert re.search(r"cancelled: <strong>1</strong>", page)

        assert "Showing the newest" not in page
        monkeypatch.setattr(views, "LIST_LIMIT", 1)
        assert "Showing the newest 1;" in client.get("/runs").text
        monkeypatch.setattr(views, "LIST_LIMIT", 100)

        only_sample = client.get("/runs", params={"kind": "sample"}).text
        assert f'data-job="{sample.id}"' in only_sample and f'data-job="{reward.id}"' not in only_sample
        only_cancelled = client.get("/runs", params={"status": "cancelled"}).text
        assert f'data-job="{reward.id}"' in only_cancelled
        assert f'data-job="{sample.id}"' not in only_cancelled

    def test_polls_while_something_runs_and_htmx_gets_the_fragment(
        self, client: TestClient, session: Session
    ) -> None:
        job = _running(session, make_job(session, kind="train_ppo"), progress=0.25)
        login(client, make_user(session, role="researcher"))
        page = client.get("/runs").text
        assert 'hx-trigger="every 2s"' in page
        assert 'value="0.2500"' in page and "25%" in page

        fragment = client.get("/runs", headers={"HX-Request": "true"})
        assert fragment.status_code == 200
        assert "<html" not in fragment.text and 'id="runs-list"' in fragment.text
        assert f'data-job="{job.id}"' in fragment.text

        jobs.complete(session=session, job=job, result={})
        session.flush()
        done = client.get("/runs", headers={"HX-Request": "true"}).text
        assert "hx-trigger" not in done  # nothing runs: polling stops

    def test_failed_jobs_show_their_error_and_panels_from_other_domains_appear(
        self, client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        job = _running(session, make_job(session, kind="sample"))
        jobs.fail(session=session, job=job, error="OSError: no model <x>\ntraceback line")
        panel = "runs/panels/zz_test.html"
        monkeypatch.setattr(views, "start_panels", lambda: [panel])
        monkeypatch.setattr(
            templates.env,
            "loader",
            ChoiceLoader(
                [
                    DictLoader(
                        {panel: '<form class="card" id="test-panel">{{ csrf_input(request) }}</form>'}
                    ),
                    templates.env.loader,
                ]
            ),
        )
        csrf = login(client, make_user(session, role="researcher"))
        page = client.get("/runs").text
        assert "OSError: no model &lt;x&gt;" in page and "traceback line" not in page
        assert (
            f'<form class="card" id="test-panel"><input type="hidden" name="csrf_token" value="{csrf}">'
            in page
        )


class TestRunPage:
    def test_running_job_shows_progress_time_left_curves_and_log(
        self, client: TestClient, session: Session
    ) -> None:
        job = _running(
            session, make_job(session, kind="train_reward", params={"lr": 1e-5}), progress=0.5, minutes_ago=10
        )
        for step in range(1, 4):
            jobs.add_metrics(
                session=session,
                job_id=job.id,
                step=step,
                values={"train/loss": 1.0 / step, "val/loss": 1.1 / step, "val/accuracy": 0.5 + step / 10},
            )
        jobs.log(session=session, job_id=job.id, line="epoch 1 <started>")
        login(client, make_user(session, role="researcher"))

        page = client.get(f"/runs/{job.id}").text
        assert 'hx-trigger="every 2s"' in page
        assert "left" in page and re.search(r"about (9|10) min \d\d s left", page)
        # Parameters as a table: the definition's label, the value, its help as the tooltip.
        row = r'<tr title="lr: Peak AdamW[^"]*"><th scope="row">Learning rate</th><td>1e-05</td>'
        assert re.search(row, page)
        # One chart for the two losses, one for accuracy.
        svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
        assert len(svgs) == 2
        loss = next(s for s in svgs if ">Loss<" in s)
        assert loss.count("<polyline") == 2 and 'data-series="val/loss"' in loss
        assert "epoch 1 &lt;started&gt;" in page

        fragment = client.get(f"/runs/{job.id}", headers={"HX-Request": "true"}).text
        assert "<html" not in fragment and 'id="run-detail"' in fragment

    def test_failed_job_shows_its_error_escaped_and_stops_polling(
        self, client: TestClient, session: Session
    ) -> None:
        job = _running(session, make_job(session))
        jobs.fail(session=session, job=job, error="ValueError: bad <b>config</b>")
        login(client, make_user(session, role="researcher"))
        page = client.get(f"/runs/{job.id}").text
        assert 'class="card failure" role="alert"' in page
        assert "bad &lt;b&gt;config&lt;/b&gt;" in page and "<b>config" not in page
        assert "hx-trigger" not in page

    def test_reward_job_shows_what_it_trained_on(self, client: TestClient, session: Session) -> None:
        """The export manifest a train_reward job cites: filters (sets by name), counts, sha256."""
        from app.exports.filters import Filters
        from tests.factories import make_prompt_set

        ps = make_prompt_set(session, name="round-<1>")
        filters = Filters(prompt_set_ids=[ps.id], min_labels=2, split_fractions=(0.8, 0.2, 0.0))
        data = {
            "format": "groups",
            "filters": filters.describe(),
            "counts": {
                "rows": 12,
                "annotations": 30,
                "pairs": 170,
                "ties": 10,
                "prompts": 12,
                "rows_by_split": {"train": 10, "validation": 2, "test": 0},
            },
            "sha256": "ab" * 32,
        }
        job = _running(session, make_job(session, kind="train_reward"))
        jobs.complete(session=session, job=job, result={"data": data, "metrics": {}})
        login(client, make_user(session, role="researcher"))
        page = client.get(f"/runs/{job.id}").text
        section = page[page.index("Trained on") :]
        assert "ab" * 32 in section and f"round-&lt;1&gt; (#{ps.id})" in section
        assert "12 tasks · 30 rankings · 170 pairs (10 ties)" in section and "validation 2" in section
        assert "min labels</dt><dd>2<" in section and "0.8/0.2/0.0" in section
        other = _running(session, make_job(session, kind="train_ppo"))
        assert "Trained on" not in client.get(f"/runs/{other.id}").text

    def test_samples_table_is_escaped(self, client: TestClient, session: Session) -> None:
        job = _running(session, make_job(session, kind="train_ppo"))
        jobs.complete(
            session=session,
            job=job,
            result={
                "samples": [
                    {"step": 10, "prompt": "<script>alert(1)</script>", "response": "a & b", "score": 0.75},
                    {"prompt": "p2", "response": "<img src=x>", "score": None},
                ],
                "policy_id": 3,
            },
        )
        login(client, make_user(session, role="researcher"))
        page = client.get(f"/runs/{job.id}").text
        assert "<h2>Samples</h2>" in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
        assert "&lt;img src=x&gt;" in page and "a &amp; b" in page and "0.750" in page
        # The samples are not repeated in the raw result JSON.
        assert "policy_id" in page and page.count("alert(1)") == 1

    def test_samples_of_a_demo_derived_policy_are_badged(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session, role="researcher"))
        pages = {}
        for from_demo in (True, False):
            job = _running(session, make_job(session, kind="train_ppo"))
            jobs.complete(
                session=session,
                job=job,
                result={
                    "samples": [{"step": 1, "prompt": "p", "response": "r", "score": 0.1}],
                    "from_demo": from_demo,
                },
            )
            pages[from_demo] = client.get(f"/runs/{job.id}").text
        badge = '<h2>Samples <span class="demo-badge"'
        assert badge in pages[True] and badge not in pages[False]

    def test_chain_shows_each_step_with_its_status(self, client: TestClient, session: Session) -> None:
        first = make_job(session, kind="train_reward")
        second = make_job(session, kind="train_ppo", after=first)
        third = make_job(session, kind="promote", after=second)
        login(client, make_user(session, role="admin"))
        page = client.get(f"/runs/{second.id}").text
        chain = re.search(r'<ol class="chain">(.*?)</ol>', page, flags=re.S)
        assert chain is not None
        ids = re.findall(r'href="/runs/(\d+)"', chain.group(1))
        assert ids == [str(first.id), str(second.id), str(third.id)]
        assert chain.group(1).count("status-queued") == 3


def _curves_and_samples(ctx: JobContext) -> dict[str, Any]:
    """What a training handler does, in miniature: metrics per step, then a samples table."""
    for step in range(1, 6):
        ctx.metric(step, train_loss=1.0 / step, lr=1e-4)
        if step % 2 == 0:
            ctx.metric(step, val_loss=1.2 / step, val_accuracy=0.5 + step / 20)
        ctx.progress(step / 5, f"step {step} of 5")
    ctx.log("saved <model>")
    return {"samples": [{"step": 5, "prompt": "Say <hi>", "response": "hi & bye", "score": 1.5}]}


class TestWithARealWorker:
    def test_what_a_handler_reports_is_what_the_page_draws(
        self, client: TestClient, session: Session, sessions: sessionmaker[Session]
    ) -> None:
        register("h7_curves", _curves_and_samples)
        job = make_job(session, kind="h7_curves")
        session.commit()
        assert Worker(sessions, worker_id="w-test", heartbeat_seconds=60).run_one()
        login(client, make_user(session, role="researcher"))

        page = client.get(f"/runs/{job.id}").text
        assert "status-succeeded" in page and "hx-trigger" not in page
        svgs = {
            title: svg
            for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S)
            for title in re.findall(r'class="chart-title"[^>]*>([^<]+)<', svg)
        }
        assert set(svgs) == {"Loss", "Accuracy", "Learning rate"}
        points = {
            name: len(pts.split())
            for name, pts in re.findall(r'data-series="([^"]+)"[^>]*points="([^"]+)"', svgs["Loss"])
        }
        assert points == {"train_loss": 5, "val_loss": 2}
        assert "Say &lt;hi&gt;" in page and "hi &amp; bye" in page and "1.500" in page
        assert "saved &lt;model&gt;" in page


class TestCancel:
    def test_cancel_with_csrf_cancels_a_queued_job(self, client: TestClient, session: Session) -> None:
        job = make_job(session)
        csrf = login(client, make_user(session, role="researcher"))
        assert "Cancel</button>" in client.get(f"/runs/{job.id}").text
        r = client.post(f"/runs/{job.id}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/runs/{job.id}"
        assert _reload(session, job).status == JobStatus.cancelled

    def test_cancel_of_a_running_job_asks_it_to_stop(self, client: TestClient, session: Session) -> None:
        job = _running(session, make_job(session))
        csrf = login(client, make_user(session, role="researcher"))
        client.post(f"/runs/{job.id}/cancel", data={"csrf_token": csrf})
        fresh = _reload(session, job)
        assert fresh.status == JobStatus.running and fresh.cancel_requested
        assert "cancel requested" in client.get(f"/runs/{job.id}").text

    def test_cancel_without_csrf_is_refused_and_changes_nothing(
        self, client: TestClient, session: Session
    ) -> None:
        job = make_job(session)
        login(client, make_user(session, role="researcher"))
        assert client.post(f"/runs/{job.id}/cancel").status_code == 403
        assert client.post(f"/runs/{job.id}/cancel", data={"csrf_token": "wrong"}).status_code == 403
        fresh = _reload(session, job)
        assert fresh.status == JobStatus.queued and not fresh.cancel_requested


class TestJobsApi:
    def test_list_detail_and_cancel_with_a_token(self, client: TestClient, session: Session) -> None:
        user = make_user(session, role="researcher")
        token = auth.create_token(session=session, user=user, name="t").token
        job = _running(session, make_job(session, kind="train_reward", created_by_id=user.id))
        jobs.add_metrics(session=session, job_id=job.id, step=1, values={"train/loss": 0.7})
        jobs.add_metrics(session=session, job_id=job.id, step=2, values={"train/loss": 0.5})
        other = make_job(session, kind="sample")

        listing = client.get("/api/v1/jobs", headers=bearer(token)).json()
        assert [j["id"] for j in listing["jobs"]] == [other.id, job.id]
        assert listing["counts"] == {"running": 1, "queued": 1}
        assert listing["jobs"][1]["created_by"] == user.username
        assert listing["jobs"][1]["seconds_left"] > 0
        only = client.get("/api/v1/jobs", params={"kind": "sample"}, headers=bearer(token)).json()
        assert [j["id"] for j in only["jobs"]] == [other.id]
        assert client.get("/api/v1/jobs", params={"status": "nope"}, headers=bearer(token)).status_code == 422

        detail = client.get(f"/api/v1/jobs/{job.id}", headers=bearer(token)).json()
        assert detail["metrics"] == {"train/loss": [[1, 0.7], [2, 0.5]]}
        assert "attempt 1 on test-worker" in detail["log_tail"] and detail["chain"] == []

        # The API needs no CSRF token: a bearer token cannot be sent by another site.
        r = client.post(f"/api/v1/jobs/{other.id}/cancel", headers=bearer(token))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert client.get("/api/v1/jobs/999999", headers=bearer(token)).status_code == 404
