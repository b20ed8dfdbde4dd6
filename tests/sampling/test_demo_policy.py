"""The demo policy builds offline, loads through from_pretrained, writes words, and is reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.config import Settings
from app.runs import models_service, policies
from app.runs.models import ModelVersion
from trainer.models import demo as demo_policy
from trainer.sampling.backends import LocalBackend, SamplingParams, make_backend


class TestDemoPolicy:
    def test_builds_offline_and_loads_with_from_pretrained(self, tiny_policy_path: Path) -> None:
        from transformers import AutoConfig

        assert demo_policy.is_built(tiny_policy_path)
        assert (tiny_policy_path / "tokenizer.json").is_file()
        config = AutoConfig.from_pretrained(tiny_policy_path)
        assert (config.n_embd, config.n_layer) == (32, 2) and config.vocab_size < 1000
        out = LocalBackend(str(tiny_policy_path)).generate(
            [[{"role": "user", "content": "How do I make a cup of tea?"}]],
            n=4,
            params=SamplingParams(max_new_tokens=12),
            seed=0,
        )
        assert len(out[0]) == 4
        # Trained on the shipped corpus: its tokens are pieces of English, not random bytes.
        words = " ".join(s.text for s in out[0])
        assert sum(ch.isalpha() for ch in words) > len(words) / 2

    def test_is_built_once_and_reused(self, tiny_policy_path: Path, tmp_path: Path) -> None:
        target = tmp_path / "demo-policy"
        shutil.copytree(tiny_policy_path, target)
        before = (target / "model.safetensors").stat().st_mtime_ns
        assert demo_policy.ensure_demo_policy(target) == target
        assert (target / "model.safetensors").stat().st_mtime_ns == before

    def test_registry_uses_the_tiny_demo_when_asked(
        self, session: Session, tiny_policy_path: Path, tmp_path: Path
    ) -> None:
        settings = Settings(env="test", artifacts_dir=tmp_path / "artifacts")
        shutil.copytree(tiny_policy_path, policies.demo_path(settings))
        version = policies.ensure_base_policy(session=session, settings=settings, tiny=True)
        assert version.is_demo and version.is_active and version.source == "demo"
        # Once active, it is what samples when nobody chose, until `ranklab demo` switches.
        assert policies.default_policy(session=session, settings=settings).id == version.id
        backend = make_backend(version, settings)
        assert isinstance(backend, LocalBackend)

    def test_a_configured_model_replaces_the_demo_as_active(self, session: Session, tmp_path: Path) -> None:
        demo = policies.ensure_base_policy(
            session=session, settings=Settings(env="test", artifacts_dir=tmp_path), tiny=True
        )
        assert demo.is_active
        real = policies.ensure_base_policy(
            session=session, settings=Settings(env="test", policy_model="org/real-model")
        )
        assert real.is_active and not real.is_demo and real.name == "real-model"
        session.refresh(demo)
        assert not demo.is_active
        # Registered once: asking again finds the same row.
        again = policies.ensure_base_policy(
            session=session, settings=Settings(env="test", policy_model="org/real-model")
        )
        assert again.id == real.id


def test_a_policy_trained_from_the_demo_is_loaded_not_rebuilt(tiny_policy_path: Path, tmp_path: Path) -> None:
    from app.runs.models import ModelVersion

    checkpoint = tmp_path / "ppo-out"
    shutil.copytree(tiny_policy_path, checkpoint)
    (checkpoint / demo_policy.MARKER).unlink()  # a trainer's checkpoint has no demo marker
    before = (checkpoint / "model.safetensors").stat().st_mtime_ns
    child = ModelVersion(
        kind="policy", name="ppo 1", source="ppo", path=str(checkpoint), parent_id=1, is_demo=True
    )
    assert isinstance(make_backend(child, Settings(env="test", artifacts_dir=tmp_path)), LocalBackend)
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == before
    assert not demo_policy.is_built(checkpoint)


class TestDefaultPolicyRegistry:
    """With RANKLAB_POLICY_MODEL unset the base is SmolLM2 (its files: tests/trainer/test_smollm2.py)."""

    def test_nothing_configured_registers_the_default_model(self, session: Session, tmp_path: Path) -> None:
        settings = Settings(env="test", artifacts_dir=tmp_path / "artifacts")
        version = policies.default_policy(session=session, settings=settings)
        assert version.is_active and not version.is_demo and version.source == policies.DEFAULT_SOURCE
        assert version.name == "SmolLM2-135M-Instruct (default policy)"
        assert version.config["default"] is True and version.config["model"] == "SmolLM2-135M-Instruct"
        assert version.path == str(tmp_path / "artifacts" / "models" / "SmolLM2-135M-Instruct")
        assert policies.default_policy(session=session, settings=settings).id == version.id

    def test_demo_command_switches_between_the_stand_ins_but_keeps_a_trained_policy(
        self, session: Session, tmp_path: Path
    ) -> None:
        settings = Settings(env="test", artifacts_dir=tmp_path)
        tiny = policies.switch_stand_in(session=session, settings=settings, tiny=True)
        assert tiny.is_demo and tiny.is_active
        # A web upload (default_policy) does not switch: the tiny model stays until asked.
        assert policies.default_policy(session=session, settings=settings).id == tiny.id
        default = policies.switch_stand_in(session=session, settings=settings, tiny=False)
        assert default.source == policies.DEFAULT_SOURCE and default.is_active
        assert policies.switch_stand_in(session=session, settings=settings, tiny=True).id == tiny.id
        trained = ModelVersion(
            kind="policy", name="ppo 1", source="ppo", path=str(tmp_path / "ppo"), parent_id=default.id
        )
        session.add(trained)
        session.flush()
        models_service.activate(session=session, model=trained)
        for asked_tiny in (True, False):
            kept = policies.switch_stand_in(session=session, settings=settings, tiny=asked_tiny)
            assert kept.id == trained.id and trained.is_active

    def test_tiny_and_a_configured_model_conflict(self, session: Session) -> None:
        with pytest.raises(ValueError, match="RANKLAB_POLICY_MODEL"):
            policies.ensure_base_policy(
                session=session, settings=Settings(env="test", policy_model="org/m"), tiny=True
            )
