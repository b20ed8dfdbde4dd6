"""End to end: annotations in the database → train_reward job run by the worker → an active
reward model with metrics; resume after a worker died; cancel leaves no model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import trainer.reward.train as reward_train
from app.auth.models import User
from app.exports.filters import ExportError
from app.prompts.models import PromptSet
from app.runs.models import Job, JobMetric, ModelVersion
from tests.factories import make_annotation, make_job, make_prompt_set, make_task, make_user
from tests.tiny import save_tiny_policy
from tests.trainer.job_checks import TrainingJobChecks, worker
from tests.trainer.test_reward_train import MARKER, WORDS, synthetic_groups
from trainer.reward.data import load_groups
from trainer.reward.job import paths_for
from trainer.worker import Worker

PARAMS = {
    "lr": 3e-3,
    "batch_size": 4,
    "max_length": 32,
    "split_fractions": [0.75, 0.25, 0],  # the export's split, with room for validation prompts
    "eval_every": 3,
    "checkpoint_every": 3,
}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(
        tmp_path_factory.mktemp("policy") / "tiny", [" ".join(WORDS + [MARKER])], hidden=32, layers=2
    )


def seed_rankings(session: Session, n: int = 32, set_name: str = "rm-data") -> None:
    """n tasks of K=4 from the marker data; every third also ranked by a second labeler, and one
    skipped annotation that must not count."""
    ps = make_prompt_set(session, name=set_name, k=4)
    alice, bob = make_user(session), make_user(session)
    for i, g in enumerate(synthetic_groups(n, seed=3)):
        task = make_task(session, prompt_set=ps, prompt=g.prompt, completions=list(g.completions))
        make_annotation(session, task=task, user=alice, ranks=list(g.rankings[0]))
        if i % 3 == 0:
            make_annotation(session, task=task, user=bob, ranks=list(g.rankings[0]))
        elif i == 1:
            make_annotation(session, task=task, user=bob, ranks=[1, 1, 1, 1], skip_reason="unclear")
    session.commit()


class TestLoadGroups:
    def test_groups_rankings_and_filters(self, sessions: sessionmaker[Session]) -> None:
        with sessions() as s:
            seed_rankings(s, n=6)

        def load(**params: object) -> tuple[list, dict]:
            return load_groups(sessions=sessions, params=params, secret="k")

        groups, manifest = load(sets=["rm-data"])
        assert len(groups) == 6 and manifest["counts"]["annotations"] == 6 + 2  # tasks 0, 3 twice; skip not
        assert [len(g.rankings) for g in groups] == [2, 1, 1, 2, 1, 1]
        assert all(g.k == 4 for g in groups) and manifest["counts"]["pairs"] == 8 * 4
        assert {g.split for g in groups} <= {"train", "validation", "test"}
        assert manifest["format"] == "groups" and len(manifest["sha256"]) == 64
        # the export's meaning: min_labels counts a task's labels, sets go by name or id
        assert len(load(min_labels=2)[0]) == 2
        with sessions() as s:
            set_id = s.scalar(select(PromptSet.id).where(PromptSet.name == "rm-data"))
        assert load(sets=[str(set_id)])[1]["sha256"] == manifest["sha256"]
        with pytest.raises(ExportError, match="set: no prompt set called 'nope'"):
            load(sets=["nope"])
        with pytest.raises(ExportError, match="split fractions: three non-negative numbers"):
            load(split_fractions=[1, 0])


def queued_job(sessions: sessionmaker[Session], base_model: Path) -> int:
    """Rankings to train on and a queued train_reward job (committed): its id."""
    with sessions() as s:
        seed_rankings(s)
        job_id = make_job(s, kind="train_reward", params={"base_model": str(base_model), **PARAMS}).id
        s.commit()
    return job_id


@pytest.fixture
def queued(sessions: sessionmaker[Session], base_model: Path, artifacts: Path) -> int:
    """A reward job queued on the seeded rankings, with a private artifacts folder: its id."""
    return queued_job(sessions, base_model)


class TestRewardJob(TrainingJobChecks):
    paths = staticmethod(paths_for)

    def test_annotations_to_active_reward_model(
        self, sessions: sessionmaker[Session], base_model: Path, artifacts: Path
    ) -> None:
        with sessions() as s:
            seed_rankings(s)
            # Half the prompts validate: enough pairs to tell the model from chance, so it is
            # made active by itself.
            params = {
                "sets": ["rm-data"],
                "base_model": str(base_model),
                **PARAMS,
                "split_fractions": "0.5,0.5,0",
            }
            job = make_job(s, kind="train_reward", params=params)
            s.commit()
            job_id = job.id
        assert worker(sessions).run(burst=True) == 1
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job.status == "succeeded", job.error
            mv = s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
            assert mv is not None and mv.kind == "reward"
            assert mv.metrics["val_pairs"] >= 30 and mv.metrics["val_accuracy"] > 0.5 and mv.is_active
            assert mv.source == str(base_model) and Path(mv.path) == paths_for(job_id)[0]
            assert mv.metrics["val_accuracy"] is not None and "reward_std" in mv.metrics
            assert mv.config["lr"] == 3e-3 and len(mv.config["data"]["prompt_set_ids"]) == 1
            assert job.result["model_version_id"] == mv.id
            assert job.result["data"] == mv.config["manifest"] and job.result["data"]["format"] == "groups"
            names = set(s.scalars(select(JobMetric.name).where(JobMetric.job_id == job_id)))
            assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= names
        assert (Path(mv.path) / "model.safetensors").exists()
        assert not paths_for(job_id)[1].exists()  # checkpoints go once the model is whole


def test_the_score_is_normalised_on_the_active_policys_completions(
    sessions: sessionmaker[Session], artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference for the normalisation (mean 0, std 1) is the policy PPO will start from."""
    import trainer.reward.job as reward_job
    from tests.factories import make_model_version

    seen: dict[str, object] = {}

    def fake_train(cfg, groups, *, out_dir, reference, **kw):  # type: ignore[no-untyped-def]
        seen["reference"] = reference
        return reward_train.TrainResult(
            path=out_dir, metrics={"val_accuracy": None}, resumed_from_step=0, steps=0
        )

    monkeypatch.setattr(reward_job, "train", fake_train)
    with sessions() as s:
        ps = make_prompt_set(s, name="norm-data", k=2)
        current = make_model_version(s, kind="policy", is_active=True)
        older = make_model_version(s, kind="policy")
        user = make_user(s)
        for i, policy in enumerate((current, older, current)):
            task = make_task(s, prompt_set=ps, prompt=f"p{i}", completions=[f"a{i}", f"b{i}"], policy=policy)
            make_annotation(s, task=task, user=user, ranks=[1, 2])
        job_id = make_job(s, kind="train_reward", params={"base_model": "unused"}).id
        s.commit()
    assert worker(sessions).run(burst=True) == 1
    with sessions() as s:
        assert s.get(Job, job_id).status == "succeeded", s.get(Job, job_id).error
    user_turn = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    assert seen["reference"] == [
        (user_turn("p0"), "a0"),
        (user_turn("p0"), "b0"),
        (user_turn("p2"), "a2"),
        (user_turn("p2"), "b2"),
    ]


def test_trains_on_exactly_what_export_groups_writes(
    committed: sessionmaker[Session],
    base_model: Path,
    artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same filters, same data: the job's data manifest is `ranklab export groups`'s (same
    sha256, counts and filters) and its validation prompts are `--split validation`'s."""
    import json

    from click.testing import CliRunner

    from app.cli import cli
    from app.config import get_settings

    with committed() as s:
        seed_rankings(s, n=24)
        bob = s.scalar(select(User.username).order_by(User.id.desc()))
    url = committed.kw["bind"].url.render_as_string(hide_password=False)
    monkeypatch.setenv("RANKLAB_DATABASE_URL", url)
    get_settings.cache_clear()
    filters = [
        "--set",
        "rm-data",
        "--labeler",
        bob,
        "--since",
        "2000-01-01",
        "--split-fractions",
        "0.5,0.5,0",
    ]
    params = {
        "sets": ["rm-data"],
        "labelers": [bob],
        "since": "2000-01-01",
        "split_fractions": "0.5,0.5,0",
        "base_model": str(base_model),
        **{k: v for k, v in PARAMS.items() if k != "split_fractions"},
    }

    out, val = tmp_path / "groups.jsonl", tmp_path / "val.jsonl"
    for args in ([*filters, "--out", str(out)], [*filters, "--split", "validation", "--out", str(val)]):
        res = CliRunner().invoke(cli, ["export", "groups", *args])
        assert res.exit_code == 0, res.output
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    val_prompts = {json.loads(line)["prompt"] for line in val.read_text().splitlines()}
    assert val_prompts and manifest["counts"]["annotations"] < 24  # bob's rankings only

    seen: dict[str, list] = {}
    real = reward_train.split_groups

    def spy(groups):  # type: ignore[no-untyped-def]
        seen.update(real(groups))
        return seen

    monkeypatch.setattr(reward_train, "split_groups", spy)
    with committed.begin() as s:
        job_id = make_job(s, kind="train_reward", params=params).id
    assert Worker(committed, worker_id="w", heartbeat_seconds=3600, stale_seconds=60).run(burst=True) == 1
    with committed() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        data = job.result["data"]
    assert data["sha256"] == manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (data["counts"], data["filters"], data["schema_version"]) == (
        manifest["counts"],
        manifest["filters"],
        manifest["schema_version"],
    )
    assert set(data) == set(manifest)  # the export's form, key for key
    assert {g.prompt for g in seen["validation"]} == val_prompts
    assert job.result["metrics"]["val_prompts"] == len(val_prompts)
    get_settings.cache_clear()


class TestFirstActivation:
    """The first reward model is made active by itself only when measurably better than chance."""

    @pytest.mark.parametrize(
        ("metrics", "words"),
        [
            ({"val_accuracy": 0.387, "val_pairs": 12}, "12 validation pairs"),
            ({"val_accuracy": 0.45, "val_pairs": 300}, "no better than chance"),
            ({"val_accuracy": None, "val_pairs": 0}, "0 validation pairs"),
        ],
    )
    def test_a_chance_level_or_thinly_measured_model_is_left_inactive_with_a_reason(
        self, metrics: dict, words: str
    ) -> None:
        from app.runs.models_service import why_not_active_by_itself

        reason = why_not_active_by_itself(metrics)
        assert reason is not None and words in reason and "make it active by hand" in reason

    def test_a_model_clearly_above_chance_may_be(self) -> None:
        from app.runs.models_service import why_not_active_by_itself

        assert why_not_active_by_itself({"val_accuracy": 0.72, "val_pairs": 120}) is None


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_demonstrations_of_its_prompts_score_zero_on_average(
    sessions: sessionmaker[Session], base_model: Path, artifacts: Path
) -> None:
    """InstructGPT §3.5: with demonstrations for the prompts it trains on, the reward model's
    offset puts their mean score at 0 (a rejected demonstration does not count)."""
    from tests.factories import make_demonstration
    from trainer.reward.model import load_reward_model, score_replies

    with sessions() as s:
        seed_rankings(s, n=12)
        demo_set = make_prompt_set(s, name="demo-set", k=1)
        demo_set.kind = "demonstration"
        writer = make_user(s)
        groups = synthetic_groups(12, seed=3)
        for i, g in enumerate(groups[:6]):
            make_demonstration(
                s,
                prompt_set=demo_set,
                user=writer,
                prompt=g.prompt,
                reply=g.completions[i % 4],
                review_status="rejected" if i == 5 else "unreviewed",
            )
        job_id = make_job(s, kind="train_reward", params={"base_model": str(base_model), **PARAMS}).id
        s.commit()
    assert worker(sessions).run(burst=True) == 1
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        mv = s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        assert mv.config["normalized_on"].startswith("5 demonstrations")
        assert job.result["normalized_on"] == mv.config["normalized_on"]
    model, tokenizer = load_reward_model(mv.path)
    demos = [(g.messages, g.completions[i % 4]) for i, g in enumerate(groups[:5])]
    scores = score_replies(model, tokenizer, [c for c, _ in demos], [r for _, r in demos], max_length=32)
    assert abs(sum(scores) / len(scores)) < 1e-4
    rejected = score_replies(
        model, tokenizer, [groups[5].messages], [groups[5].completions[1]], max_length=32
    )
    assert scores != rejected
