"""`ranklab train reward` (queue and --inline), `ranklab reward eval`, and the dashboard form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.cli import cli
from app.runs.models import Job, ModelVersion
from tests.factories import login, make_prompt_set, make_user
from tests.trainer.conftest import assert_form_refused, queue_with_cli, submit_form
from tests.trainer.test_reward_job import base_model, seed_rankings  # noqa: F401  (fixture)
from tests.trainer.test_reward_train import synthetic_groups


def trl_file(path: Path, n: int) -> Path:
    rows = []
    for g in synthetic_groups(n, k=2, seed=7):
        best, worst = sorted(range(2), key=lambda i: g.rankings[0][i])
        rows.append({"prompt": g.prompt, "chosen": g.completions[best], "rejected": g.completions[worst]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


class TestTrainRewardCommand:
    def test_queues_a_job_with_the_filters_and_hyperparameters(self, env) -> None:  # type: ignore[no-untyped-def]
        job = queue_with_cli(env, "train reward --set round-1 --lr 2e-5 --batch-size 16 --max-length 256")
        assert job.kind == "train_reward"
        assert job.params == {  # what was typed; the trainer fills in the rest
            "sets": ["round-1"],
            "lr": 2e-5,
            "batch_size": 16,
            "max_length": 256,
        }

    @pytest.mark.slow
    def test_inline_trains_then_eval_prints_accuracy_last(
        self,
        env,
        base_model: Path,  # noqa: F811
        tmp_path: Path,
    ) -> None:
        with env.begin() as s:
            seed_rankings(s)
        out = CliRunner().invoke(
            cli,
            [
                "train",
                "reward",
                "--inline",
                "--base-model",
                str(base_model),
                "--lr",
                "3e-3",
                "--epochs",
                "3",
                "--batch-size",
                "4",
                "--max-length",
                "32",
                "--split-fractions",  # enough validation pairs for it to be made active by itself
                "0.5,0.5,0",
            ],
        )
        assert out.exit_code == 0, out.output
        with env() as s:
            mv = s.scalar(select(ModelVersion))
            assert mv.is_active and mv.kind == "reward"
            assert s.get(Job, mv.job_id).status == "succeeded"
        assert "validation accuracy" in out.output

        out = CliRunner().invoke(
            cli, ["reward", "eval", "--model", "active", str(trl_file(tmp_path / "held.jsonl", 40))]
        )
        assert out.exit_code == 0, out.output
        last = out.output.strip().splitlines()[-1]
        assert last.startswith("pairwise accuracy: ") and float(last.split()[-1]) >= 0.9
        assert "comparisons: 40" in out.output

    def test_eval_without_an_active_model_says_so(self, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        out = CliRunner().invoke(cli, ["reward", "eval", str(trl_file(tmp_path / "f.jsonl", 3))])
        assert out.exit_code != 0 and "no reward model is active" in out.output


class TestTrainRewardForm:
    def test_form_enqueues_a_job_and_redirects_to_it(self, client: TestClient, session: Session) -> None:
        make_prompt_set(session, name="round-<1>")
        fields = dict(sets=["round-<1>"], base_model="./policy", lr="3e-5", epochs="1", batch_size="4")
        page, job = submit_form(
            client, session, "/runs/new/reward", fields | dict(max_length="128", min_labels="2")
        )
        assert "round-&lt;1&gt;" in page
        assert job.kind == "train_reward" and job.params == {
            "sets": ["round-<1>"],
            "lr": 3e-5,
            "epochs": 1,
            "batch_size": 4,
            "max_length": 128,
            "min_labels": 2,
            "base_model": "./policy",
        }

    def test_bad_input_names_the_field_and_starts_nothing(self, client: TestClient, session: Session) -> None:
        fields = dict(lr="fast", sets=["nope"], epochs="1", batch_size="4", max_length="128", min_labels="1")
        reasons = [
            "lr: a number from 1e-09 to 1, not &#39;fast&#39;",
            "sets: no prompt set named",
            "base_model: no policy is active",
        ]
        assert_form_refused(client, session, "/runs/new/reward", fields, reasons)

    def test_labelers_may_not_start_training(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="labeler"))
        r = client.post("/runs/new/reward", data={"csrf_token": csrf, "base_model": "x"})
        assert r.status_code == 403 and session.scalar(select(Job)) is None
