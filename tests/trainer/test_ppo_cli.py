"""`ranklab train ppo` (queue and --inline), `ranklab round`, and the PPO / round web forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.cli import cli
from app.runs.models import Job, ModelVersion
from tests.factories import login, make_model_version, make_prompt_row, make_prompt_set, make_user, words
from tests.trainer.conftest import assert_form_refused, queue_with_cli, submit_form
from tests.trainer.ppo_fixtures import make_models, one_thread
from tests.trainer.test_ppo_job import seed


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_models(tmp_path_factory.mktemp("ppo-cli-models"))


class TestTrainPPOCommand:
    def test_queues_a_job_with_its_knobs(self, env) -> None:  # type: ignore[no-untyped-def]
        line = "train ppo --set round-1 --iterations 50 --beta 0.05 --ptx-coef 2 --kl-target 6"
        job = queue_with_cli(env, line)
        assert job.kind == "train_ppo"
        assert job.params == dict(sets=["round-1"], iterations=50, beta=0.05, ptx_coef=2.0, kl_target=6.0)

    @pytest.mark.slow
    def test_inline_prints_one_json_summary(self, env, models) -> None:  # type: ignore[no-untyped-def]
        with env() as s:
            seed(s, models)
        with one_thread():
            out = CliRunner().invoke(
                cli,
                words(
                    "train ppo --inline --iterations 3 --batch-size 8 --mini-batch-size 4 "
                    "--max-new-tokens 6 --lr 1e-3"
                ),
            )
        assert out.exit_code == 0, out.output
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["iterations"] == 3 and summary["active"] is False
        assert isinstance(summary["first_mean_reward"], float) and isinstance(summary["last_kl"], float)
        with env() as s:
            mv = s.get(ModelVersion, summary["policy_version_id"])
            assert mv.kind == "policy" and not mv.is_active
            assert s.get(Job, summary["job_id"]).status == "succeeded"


class TestRoundCommand:
    def test_queues_the_chain(self, env, models) -> None:  # type: ignore[no-untyped-def]
        with env() as s:
            seed(s, models, set_name="round-1")
        out = CliRunner().invoke(cli, ["round", "--set", "round-1", "--mix", "--iterations", "7"])
        assert out.exit_code == 0, out.output
        with env() as s:
            chain = list(s.scalars(select(Job).order_by(Job.id)))
            assert [j.kind for j in chain] == ["train_reward", "train_ppo", "promote", "sample"]
            assert chain[1].params["iterations"] == 7 and chain[2].params["mix"] is True
        assert "round-1 · round 2" in out.output

    def test_unknown_set_is_refused(self, env) -> None:  # type: ignore[no-untyped-def]
        out = CliRunner().invoke(cli, ["round", "--set", "nope"])
        assert out.exit_code != 0 and "no prompt set named 'nope'" in out.output
        with env() as s:
            assert s.scalar(select(Job)) is None


class TestForms:
    def test_ppo_form_enqueues_and_redirects(self, client: TestClient, session: Session) -> None:
        make_prompt_set(session, name="set-<b>")
        make_model_version(session, kind="reward", is_active=True)
        fields = dict(sets=["set-<b>"], iterations="20", batch_size="32", mini_batch_size="8", ppo_epochs="2")
        fields |= dict(
            learning_rate="1e-5", beta="0.1", ptx_coef="0", max_new_tokens="32", seed="1", kl_target=""
        )
        page, job = submit_form(client, session, "/runs/new/ppo", fields)
        assert "set-&lt;b&gt;" in page and "set-<b>" not in page
        assert job.kind == "train_ppo" and job.params["sets"] == ["set-<b>"] and job.params["beta"] == 0.1
        assert "kl_target" not in job.params

    def test_ppo_form_takes_an_uploaded_pretraining_corpus(
        self, client: TestClient, session: Session, app
    ) -> None:  # type: ignore[no-untyped-def]
        make_model_version(session, kind="reward", is_active=True)
        csrf = login(client, make_user(session, role="researcher"))
        assert 'name="ptx_file"' in client.get("/runs/new/ppo").text
        corpus = b'{"text": "the cat sat"}\n\n{"text": "a dog ran"}\n'
        from app.runs.params import TRAIN_PPO

        form = {p.name: str(p.default) for p in TRAIN_PPO.role("hyper") if p.default is not None}
        r = client.post(
            "/runs/new/ppo",
            data={**form, "csrf_token": csrf, "ptx_coef": "27.8"},
            files={"ptx_file": ("pretrain.jsonl", corpus, "application/json")},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        job = session.scalar(select(Job).order_by(Job.id.desc()))
        assert job.params["ptx_coef"] == 27.8
        assert Path(job.params["ptx_file"]).read_bytes() == corpus  # what the train_ppo job reads
        stored = Path(app.state.settings.artifacts_dir) / "ptx"
        before = sorted(stored.iterdir())
        bad = b'{"text": "fine"}\n{"txt": "typo"}\n'
        r = client.post(
            "/runs/new/ppo",
            data={**form, "csrf_token": csrf, "ptx_coef": "1"},
            files={"ptx_file": ("bad.jsonl", bad, "application/json")},
        )
        assert r.status_code == 422 and "bad.jsonl, line 2" in r.text
        assert session.scalar(select(func.count(Job.id))) == 1 and sorted(stored.iterdir()) == before

    def test_ppo_form_names_bad_fields_and_starts_nothing(self, client: TestClient, session: Session) -> None:
        fields = dict(iterations="many", beta="-1", sets=["nope"], batch_size="4", mini_batch_size="8")
        reasons = [
            "iterations: a whole number from 1 to 1e+06, not &#39;many&#39;",
            "beta: a number from 0 to 100, not &#39;-1&#39;",
            "sets: no prompt set named",
            "reward_version_id: no reward model is active",
        ]
        assert_form_refused(client, session, "/runs/new/ppo", fields, reasons)

    def test_round_button_queues_the_chain(self, client: TestClient, session: Session) -> None:

        ps = make_prompt_set(session, name="live")
        session.add(make_prompt_row(ps.id, "hello"))
        session.flush()
        csrf = login(client, make_user(session, role="admin"))
        assert "Start next round" in client.get("/runs/new/round").text
        r = client.post(
            "/runs/round",
            data={"csrf_token": csrf, "sets": ["live"], "mix": "1", "iterations": "5"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        chain = list(session.scalars(select(Job).order_by(Job.id)))
        assert [j.kind for j in chain] == ["train_reward", "train_ppo", "promote", "sample"]
        assert r.headers["location"] == f"/runs/{chain[0].id}" and chain[1].params["iterations"] == 5

    def test_round_needs_csrf_and_a_researcher(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session, role="researcher"))
        assert client.post("/runs/round", data={"sets": ["x"]}).status_code == 403
        client.cookies.clear()
        csrf = login(client, make_user(session, role="labeler"))
        assert client.post("/runs/round", data={"csrf_token": csrf}).status_code == 403
        assert client.get("/runs/new/ppo").status_code == 403
        assert session.scalar(select(Job)) is None
