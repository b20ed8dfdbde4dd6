"""The round end to end on a tiny model: train_reward → train_ppo → promote → sample, through the
real handlers and one worker; a failed step stops the chain; promote on its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.labeling.models import Completion, Task
from app.prompts.models import Prompt, PromptSet
from app.runs.models import Job, ModelVersion
from app.runs.models_service import ModelError
from app.runs.round_service import RoundError, enqueue_round, promote
from tests.factories import make_annotation, make_model_version, make_prompt_set, make_task, make_user
from tests.trainer.ppo_fixtures import MARKER, PROMPT_TEXTS, TINY_PPO, make_models, one_thread
from trainer.worker import Worker

pytestmark = pytest.mark.slow

REWARD = {
    "lr": 3e-3,
    "batch_size": 4,
    "max_length": 32,
    "split_fractions": [0.75, 0.25, 0],
    "eval_every": 50,
    "checkpoint_every": 0,
}
PPO = {**TINY_PPO, "iterations": 2, "save_every": 0, "sample_every": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_models(tmp_path_factory.mktemp("round-models"))


def seed_labeled(session: Session, policy_path: Path, *, annotate: bool = True) -> ModelVersion:
    """An active tiny policy and a labeled set: completions with the marker word rank first."""
    policy = make_model_version(session, kind="policy", is_active=True)
    policy.path = str(policy_path)
    ps = make_prompt_set(session, name="round-src", k=4)
    ps.sampling = {"max_new_tokens": 6}
    labeler = make_user(session)
    for i, prompt in enumerate(PROMPT_TEXTS * 2):
        comps = [f"the cat {MARKER} sat", f"a dog ran {i}", f"{MARKER} big box", f"the red mat {i}"]
        task = make_task(session, prompt_set=ps, prompt=f"{prompt} {i}", completions=comps, policy=policy)
        if annotate:
            make_annotation(session, task=task, user=labeler, ranks=[1, 2, 1, 3])
    session.commit()
    return policy


def worker(sessions: sessionmaker[Session]) -> Worker:
    return Worker(sessions, worker_id="round-test", heartbeat_seconds=3600, stale_seconds=600)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo policy at its test size (a few seconds of training on the shipped corpus)."""
    from trainer.models.demo import TINY, build_demo_policy

    with one_thread():
        return build_demo_policy(tmp_path_factory.mktemp("demo") / "demo-policy", TINY)


class TestRound:
    def test_the_round_on_the_demo_model(self, sessions, demo_files, artifacts) -> None:
        from app.runs import policies

        shutil.copytree(demo_files, policies.demo_path(get_settings()))
        with sessions() as s:
            demo = policies.ensure_base_policy(session=s, settings=get_settings(), tiny=True)
            assert demo.is_demo and demo.is_active
            ps = make_prompt_set(s, name="demo-src", k=4)
            ps.sampling = {"max_new_tokens": 8}
            labeler = make_user(s)
            for i in range(8):
                comps = [
                    "Sure, here is a short answer.",
                    f"No {i}.",
                    "Happy to help with that.",
                    f"Maybe {i}",
                ]
                task = make_task(
                    s,
                    prompt_set=ps,
                    prompt=f"Say something kind, number {i}.",
                    completions=comps,
                    policy=demo,
                )
                make_annotation(s, task=task, user=labeler, ranks=[1, 3, 2, 4])
            rnd = enqueue_round(session=s, sets=["demo-src"], reward_params=REWARD, ppo_params=PPO)
            ids, copy_id, demo_id = [j.id for j in rnd.jobs], rnd.new_sets[0].id, demo.id
            s.commit()
        worker(sessions).run(burst=True)
        with sessions() as s:
            done = [s.get(Job, i) for i in ids]
            assert [j.status for j in done] == ["succeeded"] * 4, [(j.kind, j.error) for j in done]
            new = s.get(ModelVersion, done[1].result["model_version_id"])
            assert new.is_active and new.parent_id == demo_id and new.config["parent_is_demo"]
            assert done[1].result["from_demo"]  # the run page badges its samples as demo text
            tasks = list(s.scalars(select(Task).where(Task.prompt_set_id == copy_id)))
            assert len(tasks) == 8
            assert all({c.model_version_id for c in t.completions} == {new.id} for t in tasks)

    def test_the_whole_chain_on_a_tiny_model(self, sessions, models, artifacts) -> None:
        with sessions() as s:
            old = seed_labeled(s, models[0])
            rnd = enqueue_round(session=s, sets=["round-src"], mix=True, reward_params=REWARD, ppo_params=PPO)
            ids = [j.id for j in rnd.jobs]
            copy_id = rnd.new_sets[0].id
            s.commit()
            assert [j.kind for j in rnd.jobs] == ["train_reward", "train_ppo", "promote", "sample"]
            assert [j.after_id for j in rnd.jobs] == [None, ids[0], ids[1], ids[2]]
            waiting = rnd.new_sets[0]
            assert waiting.status == "sampling" and waiting.report["job_id"] == ids[3]
        worker(sessions).run(burst=True)
        with sessions() as s:
            done = [s.get(Job, i) for i in ids]
            assert [j.status for j in done] == ["succeeded"] * 4, [(j.kind, j.error) for j in done]
            new = s.get(ModelVersion, done[1].result["model_version_id"])
            assert new.is_active and new.parent_id == old.id
            assert not s.get(ModelVersion, old.id).is_active
            reward = s.get(ModelVersion, done[0].result["model_version_id"])
            assert reward.is_active and done[1].result["reward_version_id"] == reward.id
            copy = s.get(PromptSet, copy_id)
            assert copy.name == "round-src · round 2" and copy.status == "active"
            assert (copy.policy_version_id, copy.compare_version_id) == (new.id, old.id)
            assert done[3].params["policy_version_id"] == new.id
            n_prompts = s.scalar(
                select(func.count()).select_from(Prompt).where(Prompt.prompt_set_id == copy_id)
            )
            tasks = list(s.scalars(select(Task).where(Task.prompt_set_id == copy_id)))
            assert len(tasks) == n_prompts == len(PROMPT_TEXTS) * 2
            for task in tasks:  # every task mixes the new policy's completions with the old one's
                versions = [c.model_version_id for c in task.completions]
                assert len(versions) == 4 and versions.count(new.id) == 2 and versions.count(old.id) == 2
            # the source set keeps its own tasks, untouched
            src = s.scalar(select(PromptSet).where(PromptSet.name == "round-src"))
            assert (
                s.scalar(
                    select(func.count())
                    .select_from(Completion)
                    .join(Task)
                    .where(Task.prompt_set_id == src.id)
                )
                == len(PROMPT_TEXTS) * 2 * 4
            )

    def test_a_failed_step_stops_the_chain(self, sessions, models, artifacts) -> None:
        with sessions() as s:
            old = seed_labeled(s, models[0], annotate=False)  # nothing to train a reward model on
            rnd = enqueue_round(session=s, sets=["round-src"], reward_params=REWARD, ppo_params=PPO)
            ids = [j.id for j in rnd.jobs]
            s.commit()
        worker(sessions).run(burst=True)
        with sessions() as s:
            done = [s.get(Job, i) for i in ids]
            assert done[0].status == "failed" and "no rankings" in done[0].error
            assert all(j.status == "failed" for j in done[1:])
            assert f"job {ids[0]} (train_reward)" in done[1].error
            assert s.get(ModelVersion, old.id).is_active
            assert (
                s.scalar(
                    select(func.count())
                    .select_from(ModelVersion)
                    .where(ModelVersion.kind == "policy", ModelVersion.job_id.is_not(None))
                )
                == 0
            )

    def test_bad_rounds_are_refused_before_anything_is_queued(self, session) -> None:
        make_prompt_set(session, name="empty-set")
        with pytest.raises(RoundError, match="no prompt set named 'nope'"):
            enqueue_round(session=session, sets=["nope"])
        with pytest.raises(RoundError, match="without prompts: empty-set"):
            enqueue_round(session=session, sets=["empty-set"])
        assert session.scalar(select(func.count()).select_from(Job)) == 0


class TestPromote:
    def test_promote_by_id_switches_the_active_policy(self, session) -> None:
        old = make_model_version(session, kind="policy", is_active=True)
        new = make_model_version(session, kind="policy")
        new.parent_id = old.id
        out = promote(session=session, params={"model_version_id": new.id})
        assert out["policy_version_id"] == new.id and out["previous_policy_id"] == old.id
        assert new.is_active and not old.is_active

    def test_promote_refuses_a_reward_model(self, session) -> None:
        rm = make_model_version(session, kind="reward")
        with pytest.raises(ModelError, match="not a policy"):
            promote(session=session, params={"model_version_id": rm.id})


class TestRoundWithSFT:
    def test_sft_then_reward_then_ppo_from_the_sft_policy(self, sessions, models, artifacts) -> None:
        from tests.factories import make_demonstration

        with sessions() as s:
            old = seed_labeled(s, models[0])
            demos = make_prompt_set(s, name="demos", k=1)
            demos.kind = "demonstration"
            writer = make_user(s)
            for i, prompt in enumerate(PROMPT_TEXTS * 2):
                make_demonstration(
                    s, prompt_set=demos, user=writer, prompt=f"{prompt} {i}", reply=f"the {MARKER} cat"
                )
            s.commit()
            sft_params = {"epochs": 1, "batch_size": 4, "max_length": 64, "lr": 1e-3}
            rnd = enqueue_round(
                session=s, reward_params=REWARD, ppo_params=PPO, sft=True, sft_params=sft_params
            )
            ids = [j.id for j in rnd.jobs]
            s.commit()
            assert [j.kind for j in rnd.jobs] == [
                "train_sft",
                "train_reward",
                "train_ppo",
                "promote",
                "sample",
            ]
            assert [j.after_id for j in rnd.jobs] == [None, *ids[:4]]
            assert [ps.name for ps in rnd.new_sets] == ["round-src · round 2"]  # not the demonstration set
            assert rnd.jobs[2].params["policy_from_job"] == ids[0]
        worker(sessions).run(burst=True)
        with sessions() as s:
            done = [s.get(Job, i) for i in ids]
            assert [j.status for j in done] == ["succeeded"] * 5, [(j.kind, j.error) for j in done]
            sft_policy = s.get(ModelVersion, done[0].result["policy_version"])
            assert sft_policy.parent_id == old.id
            ppo_policy = s.get(ModelVersion, done[2].result["model_version_id"])
            assert (
                ppo_policy.parent_id == sft_policy.id and ppo_policy.is_active
            )  # PPO's start and KL reference
            reward = s.get(ModelVersion, done[1].result["model_version_id"])
            assert "demonstrations" in reward.config["normalized_on"]
            # The demonstrations are now older than the last SFT policy: the next round has no SFT.
            again = enqueue_round(session=s, ppo_params=PPO, sft=True)
            assert [j.kind for j in again.jobs][:2] == ["train_reward", "train_ppo"]
            s.rollback()
