"""The model registry: one active model per kind, the /models page and API, and the CLI."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth
from app.cli import cli
from app.errors import NotFound
from app.runs import models_service as registry
from app.runs import service as jobs
from app.runs.models import Job, JobStatus, ModelKind, ModelVersion
from tests.factories import bearer, login, make_job, make_user


def make_model(
    session: Session,
    *,
    kind: str = ModelKind.policy,
    name: str | None = None,
    active: bool = False,
    **kw: object,
) -> ModelVersion:
    name = name or f"{kind}-{session.scalar(select(func.count()).select_from(ModelVersion))}"
    model = ModelVersion(kind=kind, name=name, source=kw.pop("source", "test"), is_active=active, **kw)  # type: ignore[arg-type]
    session.add(model)
    session.flush()
    return model


def active_ids(session: Session, kind: str) -> list[int]:
    session.expire_all()
    return list(
        session.scalars(
            select(ModelVersion.id).where(ModelVersion.kind == kind, ModelVersion.is_active.is_(True))
        )
    )


class TestOneActivePerKind:
    def test_activate_switches_within_the_kind_only(self, session: Session) -> None:
        p1 = make_model(session, active=True)
        p2 = make_model(session)
        r1 = make_model(session, kind=ModelKind.reward, active=True)
        r2 = make_model(session, kind=ModelKind.reward)

        registry.promote_policy(session=session, model=p2)
        assert active_ids(session, ModelKind.policy) == [p2.id]
        assert active_ids(session, ModelKind.reward) == [r1.id]

        registry.activate_reward(session=session, model=r2)
        registry.activate_reward(session=session, model=r2)  # again: still one
        assert active_ids(session, ModelKind.reward) == [r2.id]
        assert active_ids(session, ModelKind.policy) == [p2.id]

        registry.promote_policy(session=session, model=p1)
        assert active_ids(session, ModelKind.policy) == [p1.id]
        assert registry.active(session=session, kind=ModelKind.policy).id == p1.id  # type: ignore[union-attr]

    def test_first_activation_with_none_active(self, session: Session) -> None:
        r = make_model(session, kind=ModelKind.reward)
        registry.activate_reward(session=session, model=r)
        assert active_ids(session, ModelKind.reward) == [r.id]

    def test_wrong_kind_is_refused_and_nothing_changes(self, session: Session) -> None:
        p = make_model(session, active=True)
        r = make_model(session, kind=ModelKind.reward)
        with pytest.raises(registry.ModelError, match="not a policy"):
            registry.promote_policy(session=session, model=r)
        with pytest.raises(registry.ModelError, match="not a reward model"):
            registry.activate_reward(session=session, model=p)
        assert active_ids(session, ModelKind.policy) == [p.id]
        assert active_ids(session, ModelKind.reward) == []
        with pytest.raises(NotFound, match="No model version with id"):
            registry.get_model(session=session, model_id=987654)
        with pytest.raises(registry.ModelError, match="unknown model kind"):
            registry.list_models(session=session, kind="value")

    def test_headline_metric_and_listing(self, session: Session) -> None:
        r = make_model(session, kind=ModelKind.reward, metrics={"val_accuracy": 0.71, "val_loss": 0.6})
        p = make_model(session, metrics={})
        assert registry.headline(r) == ("val_accuracy", 0.71)
        assert registry.headline(p) is None
        assert [m.id for m in registry.list_models(session=session, kind="reward")] == [r.id]


class TestConcurrentPromotion:
    def test_two_promotions_at_once_leave_exactly_one_active(
        self, committed_pg: sessionmaker[Session]
    ) -> None:
        with committed_pg.begin() as s:
            ids = [make_model(s, active=(i == 0)).id for i in range(5)]
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def promote(model_id: int) -> None:
            try:
                with committed_pg.begin() as s:
                    barrier.wait(timeout=10)
                    registry.promote_policy(session=s, model=registry.get_model(session=s, model_id=model_id))
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=promote, args=(i,)) for i in ids[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == []
        with committed_pg() as s:
            active = active_ids(s, ModelKind.policy)
        assert len(active) == 1 and active[0] in ids[1:]


class TestModelsPage:
    def test_shows_both_kinds_with_accuracy_parent_and_demo_badge(
        self, client: TestClient, session: Session
    ) -> None:
        job = make_job(session, kind="train_reward")
        base = make_model(session, name="demo policy", source="demo", is_demo=True, active=True)
        child = make_model(
            session,
            name="ppo <v2>",
            parent_id=base.id,
            metrics={"mean_reward": 1.234, "first_mean_reward": -0.5, "kl": 0.0421},
            config={"parent_is_demo": True},
        )
        make_model(
            session, kind=ModelKind.reward, name="rm-1", job_id=job.id, metrics={"val_accuracy": 0.724}
        )
        login(client, make_user(session, role="researcher"))
        page = client.get("/models").text
        assert "72.4%" in page and f'href="/runs/{job.id}"' in page
        assert "demo model</span>" in page
        assert "ppo &lt;v2&gt;" in page and "-0.500 → 1.234" in page and "0.042" in page
        assert "from the demo model</span>" in page
        assert f"#{base.id} demo policy" in page  # the child's parent
        assert f'action="/models/{child.id}/promote"' in page
        assert f'action="/models/{base.id}/promote"' not in page  # already active

    def test_a_reward_model_left_inactive_says_why(self, client: TestClient, session: Session) -> None:
        reason = registry.why_not_active_by_itself({"val_accuracy": 0.387, "val_pairs": 12})
        assert reason is not None
        make_model(
            session,
            kind=ModelKind.reward,
            name="rm-thin",
            metrics={"val_accuracy": 0.387, "val_pairs": 12, "not_active_because": reason},
        )
        login(client, make_user(session, role="researcher"))
        page = client.get("/models").text
        assert "12 validation pairs, fewer than the 30 needed" in page and "Make active" in page

    def test_promote_and_activate_buttons_need_csrf(self, client: TestClient, session: Session) -> None:
        old = make_model(session, active=True)
        new = make_model(session)
        rm = make_model(session, kind=ModelKind.reward)
        csrf = login(client, make_user(session, role="admin"))

        assert client.post(f"/models/{new.id}/promote").status_code == 403
        assert active_ids(session, ModelKind.policy) == [old.id]

        r = client.post(f"/models/{new.id}/promote", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert active_ids(session, ModelKind.policy) == [new.id]
        client.post(f"/models/{rm.id}/activate", data={"csrf_token": csrf})
        assert active_ids(session, ModelKind.reward) == [rm.id]

        wrong = client.post(f"/models/{rm.id}/promote", data={"csrf_token": csrf})
        assert wrong.status_code == 422 and "not a policy" in wrong.text
        assert active_ids(session, ModelKind.policy) == [new.id]

    def test_labeler_cannot_promote(self, client: TestClient, session: Session) -> None:
        old = make_model(session, active=True)
        new = make_model(session)
        csrf = login(client, make_user(session, role="labeler"))
        assert client.post(f"/models/{new.id}/promote", data={"csrf_token": csrf}).status_code == 403
        assert active_ids(session, ModelKind.policy) == [old.id]


class TestModelsApi:
    def test_list_by_kind_and_activate(self, client: TestClient, session: Session) -> None:
        token = auth.create_token(session=session, user=make_user(session, role="researcher"), name="t").token
        p = make_model(session, active=True)
        p2 = make_model(session, parent_id=p.id)
        make_model(session, kind=ModelKind.reward, metrics={"val_accuracy": 0.7})
        policies = client.get("/api/v1/models", params={"kind": "policy"}, headers=bearer(token)).json()
        assert [m["id"] for m in policies] == [p2.id, p.id] and policies[0]["parent_id"] == p.id
        rewards = client.get("/api/v1/models", params={"kind": "reward"}, headers=bearer(token)).json()
        assert rewards[0]["metrics"] == {"val_accuracy": 0.7}
        assert len(client.get("/api/v1/models", headers=bearer(token)).json()) == 3
        assert client.get("/api/v1/models", params={"kind": "x"}, headers=bearer(token)).status_code == 422

        out = client.post(f"/api/v1/models/{p2.id}/activate", headers=bearer(token))
        assert out.status_code == 200 and out.json()["is_active"] is True
        assert active_ids(session, ModelKind.policy) == [p2.id]


# --- CLI: real commits on the test database, which the command opens through its settings (cli_db) ---


class TestCli:
    def test_policies_list_and_promote(self, cli_db: sessionmaker[Session]) -> None:
        with cli_db.begin() as s:
            base = make_model(s, name="base", source="demo", is_demo=True, active=True)
            child = make_model(s, name="ppo-1", parent_id=base.id, metrics={"mean_reward": 0.5})
            make_model(s, kind=ModelKind.reward, name="rm")
            base_id, child_id = base.id, child.id
        runner = CliRunner()

        out = runner.invoke(cli, ["policies", "list"])
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert "rm" not in out.output
        child_line = next(line for line in lines if "ppo-1" in line)
        assert str(base_id) in child_line.split("ppo-1")[1] and "mean_reward=0.5" in child_line
        assert "active" in next(line for line in lines if "base [demo]" in line)

        as_json = [
            json.loads(line)
            for line in runner.invoke(cli, ["policies", "list", "--json"]).output.splitlines()
        ]
        assert {(m["id"], m["parent_id"], m["active"]) for m in as_json} == {
            (child_id, base_id, False),
            (base_id, None, True),
        }

        out = runner.invoke(cli, ["policies", "promote", str(child_id)])
        assert out.exit_code == 0 and f"policy {child_id} (ppo-1) is now active" in out.output
        with cli_db() as s:
            assert active_ids(s, ModelKind.policy) == [child_id]

        bad = runner.invoke(cli, ["policies", "promote", "99999"])
        assert bad.exit_code != 0 and "No model version with id 99999" in bad.output

    def test_jobs_list_and_cancel(self, cli_db: sessionmaker[Session]) -> None:
        with cli_db.begin() as s:
            running = make_job(s, kind="sample")
            assert jobs.claim(session=s, worker_id="w1") is running
            failed = make_job(s, kind="train_reward")
            assert jobs.claim(session=s, worker_id="w1") is failed
            jobs.fail(session=s, job=failed, error="boom: out of memory")
            waiting = make_job(s, kind="train_ppo")  # stays queued
            ids = (running.id, failed.id, waiting.id)
        runner = CliRunner()

        out = runner.invoke(cli, ["jobs", "list"])
        assert out.exit_code == 0, out.output
        for job_id in ids:
            assert any(
                line.split()[0] == str(job_id)
                for line in out.output.splitlines()[1:]
                if line.strip() and not line.strip().startswith("error")
            )
        assert "error: boom: out of memory" in out.output

        only = runner.invoke(cli, ["jobs", "list", "--status", "queued", "--json"]).output
        assert [json.loads(line)["id"] for line in only.splitlines()] == [waiting.id]

        out = runner.invoke(cli, ["jobs", "cancel", str(waiting.id)])
        assert out.exit_code == 0 and "cancelled" in out.output
        out = runner.invoke(cli, ["jobs", "cancel", str(running.id)])
        assert out.exit_code == 0 and "will stop at its next step" in out.output
        again = runner.invoke(cli, ["jobs", "cancel", str(waiting.id)])
        assert again.exit_code != 0 and "already cancelled" in again.output
        with cli_db() as s:
            assert s.get(Job, waiting.id).status == JobStatus.cancelled  # type: ignore[union-attr]
            assert s.get(Job, running.id).cancel_requested  # type: ignore[union-attr]

    def test_help_teaches_with_examples(self) -> None:
        runner = CliRunner()
        for args in (["jobs", "list"], ["jobs", "cancel"], ["policies", "list"], ["policies", "promote"]):
            out = runner.invoke(cli, [*args, "--help"])
            assert out.exit_code == 0 and "Example" in out.output and "ranklab " + args[0] in out.output
