"""The trainer's configs agree with the parameter definitions the form, the CLI and the API use."""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from typing import Any

import pytest

from app.runs.params import TRAIN_PPO, TRAIN_REWARD, JobSpec, ParamsError
from trainer.ppo import config as ppo_config
from trainer.reward import config as reward_config

CASES = [
    (TRAIN_REWARD, reward_config.RewardConfig, reward_config),
    (TRAIN_PPO, ppo_config.PPOConfig, ppo_config),
]


@pytest.mark.parametrize(("spec", "config", "module"), CASES, ids=["reward", "ppo"])
class TestConfigMatchesDefinition:
    def test_every_hyperparameter_is_a_config_field_with_the_same_default(
        self, spec: JobSpec, config: Any, module: Any
    ) -> None:
        defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
        for p in spec.fields:
            if p.role == "hyper" or p.name in defaults:
                assert p.name in defaults, f"{spec.kind}.{p.name} is no field of {config.__name__}"
                assert defaults[p.name] == p.default, (p.name, defaults[p.name], p.default)
                assert type(defaults[p.name]) is type(p.default) or p.default is None, p.name

    def test_no_config_field_lacks_a_definition_unless_internal(
        self, spec: JobSpec, config: Any, module: Any
    ) -> None:
        undefined = {f.name for f in fields(config)} - {p.name for p in spec.fields}
        assert undefined == set(config.INTERNAL)

    def test_the_default_config_is_valid_and_a_bad_field_is_named(
        self, spec: JobSpec, config: Any, module: Any
    ) -> None:
        config().validate()
        with pytest.raises(ParamsError, match=r"^seed: a whole number from 0 to"):
            config(seed=-1).validate()


def test_configs_load_no_torch() -> None:
    """The configs sit beside the definitions: reading them needs no torch (the web process)."""
    import subprocess

    code = "import sys, trainer.ppo.config, trainer.reward.config; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_ppo_cross_field_rule_is_the_definitions() -> None:
    with pytest.raises(ValueError, match=r"mini_batch_size: at most batch_size \(4\)"):
        ppo_config.PPOConfig.from_dict({"batch_size": 4, "mini_batch_size": 8})
    with pytest.raises(ValueError, match="kl_target: a number from 1e-06"):
        ppo_config.PPOConfig.from_dict({"kl_target": 0.0})
