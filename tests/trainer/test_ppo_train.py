"""Short CPU runs of the PPO loop on a tiny policy: it must measurably learn, and its knobs must bite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.ppo_fixtures import (
    PPO_METRICS,
    PROMPTS,
    PTX_TEXTS,
    MarkerScorer,
    launch_args,
    make_models,
    one_thread,
    small_config,
    train_in,
)
from trainer.ppo.train import CONFIG_FILE, PPOConfig, Summary, lm_loss_on, read_normalization

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_models(tmp_path_factory.mktemp("ppo-models"))


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.tables: list[list[dict]] = []
        self.lines: list[str] = []

    def progress(self, fraction: float, message: str) -> None: ...
    def metric(self, step: int, **values: float) -> None:
        self.metrics.append((step, values))

    def samples(self, step: int, rows: list[dict]) -> None:
        self.tables.append(rows)

    def log(self, line: str) -> None:
        self.lines.append(line)


def run(
    models: tuple[Path, Path],
    tmp_path: Path,
    cfg: PPOConfig,
    ptx: list[str] | None = None,
    reporter: Recorder | None = None,
) -> tuple[Summary, Path]:
    policy, reward = models
    summary = train_in(
        tmp_path,
        cfg,
        policy,
        reward,
        PROMPTS,
        ptx_texts=ptx or [],
        reporter=reporter,
        scorer=MarkerScorer(policy),
    )
    return summary, tmp_path / "out"


class TestLearning:
    def test_raises_the_reward_while_the_kl_stays_bounded(self, models, tmp_path: Path) -> None:
        rec = Recorder()
        summary, out = run(models, tmp_path, small_config(), reporter=rec)
        assert summary.first_mean_reward < 0.6
        assert summary.last_mean_reward > summary.first_mean_reward + 1.5, summary.history["mean_reward"]
        assert 0 < summary.last_kl < 15.0
        # every metric the run page draws, every iteration
        names = set(rec.metrics[-1][1])
        assert names >= PPO_METRICS
        assert [s for s, _ in rec.metrics] == list(range(1, 9))
        assert len(rec.tables) == 2 and {"prompt", "response", "score"} <= set(rec.tables[0][0])
        # the new policy is whole, loadable, and carries its config; the work folder is gone
        assert json.loads((out / CONFIG_FILE).read_text())["beta"] == 0.1
        AutoModelForCausalLM.from_pretrained(out)
        assert not (tmp_path / "work").exists()

    def test_a_very_large_beta_keeps_the_policy_near_the_reference(self, models, tmp_path: Path) -> None:
        free, _ = run(models, tmp_path / "free", small_config())
        held, _ = run(models, tmp_path / "held", small_config(beta=100.0))
        assert held.last_kl < 0.5
        assert held.last_kl < free.last_kl / 10
        assert held.last_mean_reward < free.last_mean_reward - 1.0

    def test_ptx_keeps_the_pretraining_loss_lower(self, models, tmp_path: Path) -> None:
        policy, _ = models
        tok = AutoTokenizer.from_pretrained(policy)
        losses = {}
        for coef in (0.0, 1.0):
            _, out = run(
                models, tmp_path / f"ptx{coef}", small_config(ptx_coef=coef, ptx_batch_size=4), ptx=PTX_TEXTS
            )
            losses[coef] = lm_loss_on(AutoModelForCausalLM.from_pretrained(out), tok, PTX_TEXTS)
        before = lm_loss_on(AutoModelForCausalLM.from_pretrained(policy), tok, PTX_TEXTS)
        assert losses[1.0] < losses[0.0] - 0.5, losses
        assert losses[1.0] < before


class TestConfig:
    def test_unknown_and_bad_settings_are_named(self) -> None:
        with pytest.raises(ValueError, match="unknown PPO setting.*betaa"):
            PPOConfig.from_dict({"betaa": 1})
        with pytest.raises(ValueError, match="mini_batch_size"):
            PPOConfig.from_dict({"batch_size": 4, "mini_batch_size": 8})

    def test_paper_defaults(self) -> None:
        cfg = PPOConfig()
        assert (cfg.beta, cfg.gamma, cfg.lam, cfg.clip_ratio, cfg.temperature) == (0.02, 1.0, 0.95, 0.2, 1.0)
        assert cfg.ppo_epochs == 1 and cfg.learning_rate == 9.65e-6  # the paper's 1.3B rate

    def test_normalisation_from_config_or_file(self, tmp_path: Path) -> None:
        class Cfg:
            reward_mean, reward_std = 2.0, 4.0

        assert read_normalization(tmp_path, Cfg()) == (2.0, 4.0)
        assert read_normalization(tmp_path, None) == (0.0, 1.0)
        (tmp_path / "reward_normalization.json").write_text('{"shift": 1.5, "scale": 0.5}')
        assert read_normalization(tmp_path, Cfg()) == (1.5, 0.5)


def test_ptx_needs_texts(models, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pretraining texts"):
        run(models, tmp_path, small_config(ptx_coef=1.0))
    assert not (tmp_path / "out").exists()


def test_runs_from_files_for_accelerate_launch(models, tmp_path: Path, capsys) -> None:
    from trainer.ppo.launch import main

    policy, reward = models
    sets = ["iterations=2", "batch_size=8", "mini_batch_size=4", "max_new_tokens=5"]
    with one_thread():
        main(
            [*launch_args(policy, reward, tmp_path / "prompts.jsonl", *sets), "--out", str(tmp_path / "new")]
        )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["out"] == str(tmp_path / "new") and (tmp_path / "new" / "config.json").is_file()
    assert not (tmp_path / "new.work").exists()
