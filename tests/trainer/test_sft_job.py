"""End to end: demonstrations in the database → train_sft job run by the worker → an inactive
policy version (parent and data manifest recorded); the export and the job read the same bytes;
resume after a worker died; cancel leaves nothing; `ranklab train sft --inline`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.cli import cli
from app.runs import service as jobs
from app.runs.models import Job, JobMetric, ModelVersion
from tests.factories import make_demonstration, make_job, make_model_version, make_prompt_set, make_user
from tests.trainer.job_checks import TrainingJobChecks, worker
from tests.trainer.test_sft import demos
from trainer.sft.job import paths_for

PARAMS: dict[str, Any] = {
    "sets": ["demos"],
    "lr": 3e-3,
    "epochs": 2,
    "batch_size": 4,
    "max_length": 128,
    "eval_every": 5,
    "checkpoint_every": 4,
    "split_fractions": "0.75,0.25,0",
}


def seed_demonstrations(session: Session, n: int = 40) -> None:
    """n demonstrations of the "where is the X?" rule in set "demos", one of them rejected (it
    must not count) and one edited by a reviewer (the edit counts)."""
    ps = make_prompt_set(session, name="demos", k=1)
    ps.kind = "demonstration"
    user = make_user(session)
    for i, d in enumerate(demos(0, n)):
        make_demonstration(
            session,
            prompt_set=ps,
            user=user,
            messages=list(d.messages),  # type: ignore[arg-type]
            reply="nonsense" if i == 0 else d.reply,
            review_status="rejected" if i == 0 else "unreviewed",
            edited_reply=d.reply if i == 1 else None,
        )
    session.commit()


def active_policy(session: Session, path: Path) -> ModelVersion:
    mv = make_model_version(session, kind="policy", is_active=True, name="tiny-chat")
    mv.path = str(path)
    session.commit()
    return mv


def queued_job(sessions: sessionmaker[Session], model: Path, **extra: Any) -> tuple[int, int]:
    with sessions() as s:
        seed_demonstrations(s)
        parent = active_policy(s, model).id
        job_id = make_job(s, kind="train_sft", params={**PARAMS, **extra}).id
        s.commit()
    return job_id, parent


@pytest.fixture
def queued(sessions: sessionmaker[Session], tiny_chat_model_path: Path, artifacts: Path) -> int:
    """An SFT job queued on the seeded demonstrations, with a private artifacts folder: its id."""
    return queued_job(sessions, tiny_chat_model_path)[0]


@pytest.mark.slow
class TestSFTJob(TrainingJobChecks):
    paths = staticmethod(paths_for)

    def test_demonstrations_to_an_inactive_policy_version(
        self, sessions: sessionmaker[Session], tiny_chat_model_path: Path, artifacts: Path
    ) -> None:
        job_id, parent = queued_job(sessions, tiny_chat_model_path)
        assert worker(sessions).run(burst=True) == 1
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job.status == "succeeded", job.error
            mv = s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
            assert mv is not None and mv.kind == "policy" and not mv.is_active
            assert mv.parent_id == parent and Path(mv.path) == paths_for(job_id)[0]
            r = job.result
            assert r["policy_version"] == mv.id and r["val_loss_last"] < r["val_loss_first"]
            assert mv.config["manifest"]["sha256"] == r["data"]["sha256"] and r["data"]["format"] == "sft"
            assert mv.config["manifest"]["counts"]["rows"] == 39  # the rejected one does not count
            assert mv.metrics["train_demonstrations"] + mv.metrics["val_demonstrations"] == 39
            names = set(s.scalars(select(JobMetric.name).where(JobMetric.job_id == job_id)))
            assert {"train_loss", "val_loss", "lr"} <= names
        assert (Path(mv.path) / "model.safetensors").exists()
        assert not paths_for(job_id)[1].exists()


def test_no_demonstrations_fails_with_a_reason(sessions: sessionmaker[Session], artifacts: Path) -> None:
    with sessions() as s:
        job_id = make_job(s, kind="train_sft", params={"base_model": "unused"}).id
        s.commit()
    worker(sessions).run(burst=True)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "no demonstrations" in (job.error or "")


@pytest.mark.slow
def test_the_cli_trains_inline_on_exactly_what_export_sft_writes(
    cli_db: sessionmaker[Session], tiny_chat_model_path: Path, tmp_path: Path
) -> None:
    """`ranklab train sft --inline` ends with one JSON line; its data is `ranklab export sft`'s
    with the same sets, byte for byte; `ranklab policies list` shows the new version, inactive."""
    with cli_db() as s:
        seed_demonstrations(s, n=24)
    out = tmp_path / "sft.jsonl"
    res = CliRunner().invoke(
        cli, ["export", "sft", "--set", "demos", "--split-fractions", "0.75,0.25,0", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    args = ["train", "sft", "--set", "demos", "--base", str(tiny_chat_model_path), "--epochs", "1"]
    args += ["--lr", "3e-3", "--batch-size", "4", "--max-length", "128", "--split-fractions", "0.75,0.25,0"]
    res = CliRunner().invoke(cli, [*args, "--inline"])
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"policy_version", "val_loss_first", "val_loss_last"} <= set(line) and line["active"] is False
    assert line["data_sha256"] == manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    with cli_db() as s:
        job = s.get(Job, line["job_id"])
        assert job.result["data"]["counts"] == manifest["counts"]
        assert job.result["data"]["filters"] == manifest["filters"]
    listed = CliRunner().invoke(cli, ["policies", "list"])
    assert listed.exit_code == 0
    row = next(r for r in listed.output.splitlines() if f"sft-job{line['job_id']}" in r)
    assert "active" not in row.replace("inactive", "")


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_with_a_reward_model_the_epoch_with_the_best_mean_reward_is_kept(
    sessions: sessionmaker[Session], tiny_chat_model_path: Path, artifacts: Path
) -> None:
    """Each epoch's samples on the validation prompts are scored by the active reward model (here
    the tiny chat model with a fresh score head); the version keeps the best epoch and says so."""
    job_id, _ = queued_job(sessions, tiny_chat_model_path, epochs=3)
    with sessions() as s:
        rm = make_model_version(s, kind="reward", is_active=True, name="rm")
        rm.path = str(tiny_chat_model_path)
        s.commit()
    assert worker(sessions).run(burst=True) == 1
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        epochs = job.result["metrics"]["epochs"]
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        rewards = [e["mean_reward"] for e in epochs]
        assert job.result["kept_epoch"] == 1 + rewards.index(max(rewards))
        assert "highest mean reward" in job.result["kept_because"]
        per_epoch = jobs.metrics(session=s, job_id=job_id)
        assert [p[0] for p in per_epoch["mean_reward_by_epoch"]] == [1, 2, 3]
        assert [p[0] for p in per_epoch["val_loss_by_epoch"]] == [1, 2, 3]
        assert f"kept epoch {job.result['kept_epoch']}" in job.log
    assert not list(paths_for(job_id)[1].glob("*"))  # the kept weights went with the checkpoints


@pytest.mark.slow
def test_without_a_reward_model_the_lowest_validation_loss_is_kept(
    tiny_chat_model_path: Path, tmp_path: Path
) -> None:
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.trainer.ppo_fixtures import one_thread
    from tests.trainer.test_sft import tiny_cfg
    from trainer import render
    from trainer.sft.loss import encode_example
    from trainer.sft.train import evaluate, train

    cfg = dataclasses.replace(tiny_cfg(tiny_chat_model_path), lr=3e-2)  # high: a later epoch may be worse
    with one_thread():
        result = train(
            cfg, demos(0, 40), validation=demos(40, 8), out_dir=tmp_path / "sft", work_dir=tmp_path / "w"
        )
    losses = [e["val_loss"] for e in result.metrics["epochs"]]
    assert result.metrics["kept_epoch"] == 1 + losses.index(min(losses))
    assert "lowest validation loss" in result.metrics["kept_because"]
    # The saved policy is the kept epoch's: its validation loss is that epoch's.
    tok = AutoTokenizer.from_pretrained(tmp_path / "sft")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft", dtype=torch.float32)
    val = [encode_example(tok, d.messages, d.reply, cfg.max_length) for d in demos(40, 8)]
    saved = evaluate(model, val, render.pad_id(tok), torch.device("cpu"), cfg.batch_size)
    assert saved == pytest.approx(min(losses), rel=1e-4)


class TestTrainSFTForm:
    def test_the_form_and_the_api_queue_a_job(self, client: Any, session: Session) -> None:
        from app.auth import service as auth
        from tests.factories import bearer, login

        make_prompt_set(session, name="demos-<1>")
        base = make_model_version(session, kind="policy")
        csrf = login(client, make_user(session, role="researcher"))
        page = client.get("/runs/new/sft")
        assert page.status_code == 200 and "demos-&lt;1&gt;" in page.text
        r = client.post(
            "/runs/new/sft",
            data={"csrf_token": csrf, "sets": ["demos-<1>"], "base_model": str(base.id), "epochs": "3"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        job = session.scalar(select(Job).order_by(Job.id.desc()))
        assert r.headers["location"] == f"/runs/{job.id}"
        assert job.kind == "train_sft" and job.params["sets"] == ["demos-<1>"] and job.params["epochs"] == 3
        token = auth.create_token(session=session, user=make_user(session, role="researcher")).token
        r = client.post("/api/v1/jobs/train_sft", json={"epochs": 2}, headers=bearer(token))
        assert r.status_code == 201 and r.json()["kind"] == "train_sft"

    def test_bad_input_names_the_field_and_starts_nothing(self, client: Any, session: Session) -> None:
        from tests.factories import login

        reward = make_model_version(session, kind="reward")
        csrf = login(client, make_user(session, role="researcher"))
        before = session.scalar(select(func.count(Job.id)))
        r = client.post(
            "/runs/new/sft",
            data={"csrf_token": csrf, "sets": ["nope"], "base_model": str(reward.id), "lr": "fast"},
        )
        assert r.status_code == 422
        assert "lr: a number from 1e-09 to 1, not &#39;fast&#39;" in r.text
        assert (
            "sets: no prompt set named" in r.text and f"base_model: no policy version {reward.id}" in r.text
        )
        assert session.scalar(select(func.count(Job.id))) == before
