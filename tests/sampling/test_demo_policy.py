"""The demo policy builds offline, loads through from_pretrained, writes words, and is reused."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from app.config import Settings
from app.runs import policies
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

    def test_registry_uses_the_demo_when_nothing_is_configured(
        self, session: Session, tiny_policy_path: Path, tmp_path: Path
    ) -> None:
        settings = Settings(env="test", artifacts_dir=tmp_path / "artifacts")
        shutil.copytree(tiny_policy_path, policies.demo_path(settings))
        version = policies.default_policy(session=session, settings=settings)
        assert version.is_demo and version.is_active and version.source == "demo"
        assert policies.default_policy(session=session, settings=settings).id == version.id
        backend = make_backend(version, settings)
        assert isinstance(backend, LocalBackend)

    def test_a_configured_model_replaces_the_demo_as_active(self, session: Session, tmp_path: Path) -> None:
        demo = policies.ensure_base_policy(
            session=session, settings=Settings(env="test", artifacts_dir=tmp_path)
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
