"""Shared pieces of the PPO tests: tiny policy and reward-model folders, and a rule-based scorer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from app.chat import Conversation, from_text
from tests.tiny import tiny_policy, tiny_reward_model, tiny_tokenizer
from trainer.ppo.rollout import Rollout
from trainer.ppo.train import PPOConfig, Summary, train

# A tiny PPO run's job parameters; each test adds its iterations and its save and sample schedule.
TINY_PPO = {
    "batch_size": 8,
    "mini_batch_size": 4,
    "max_new_tokens": 6,
    "learning_rate": 1e-3,
    "value_learning_rate": 1e-3,
    "warmup_iterations": 0,
}
# What every PPO iteration reports: the run page draws each.
PPO_METRICS = {
    "mean_reward",
    "kl",
    "entropy",
    "clip_frac",
    "approx_kl",
    "value_loss",
    "explained_variance",
    "response_length",
    "no_eos_share",
}

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "box",
    "red",
    "blue",
    "big",
    "small",
    "good",
    "quick",
    "slow",
    "and",
]
PROMPT_TEXTS = ["the cat sat", "a dog ran", "the red box", "big blue mat", "a small cat", "the quick dog"]
PROMPTS = [from_text(p) for p in PROMPT_TEXTS]  # conversations: one user message each
PTX_TEXTS = [
    "the cat sat on the mat",
    "a dog ran under the box",
    "the big red box and the small blue mat",
    "a quick cat and a slow dog",
]
MARKER = "good"


def make_models(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(policy folder, reward-model folder) sharing one word-level tokenizer."""
    tok = tiny_tokenizer([" ".join(WORDS)] + PTX_TEXTS)
    policy, reward = root / "policy", root / "reward"
    tiny_policy(tok, seed=seed).save_pretrained(policy)
    tok.save_pretrained(policy)
    tiny_reward_model(tok, seed=seed + 1).save_pretrained(reward)
    tok.save_pretrained(reward)
    return policy, reward


class MarkerScorer:
    """Stand-in for a trained reward model: the score is how often MARKER appears in the response.

    A known, checkable property, so a test can tell whether PPO really optimised the reward.
    """

    def __init__(self, policy_path: Path) -> None:
        from transformers import AutoTokenizer

        self.marker_id = AutoTokenizer.from_pretrained(policy_path).convert_tokens_to_ids(MARKER)

    def __call__(self, batch: Rollout) -> torch.Tensor:
        return ((batch.response == self.marker_id).float() * batch.response_mask).sum(dim=1)


def small_config(**overrides: object) -> PPOConfig:
    values: dict[str, object] = dict(
        iterations=8,
        batch_size=32,
        mini_batch_size=8,
        ppo_epochs=2,
        learning_rate=3e-3,
        value_learning_rate=3e-3,
        warmup_iterations=0,
        max_new_tokens=8,
        beta=0.1,
        missing_eos_penalty=0.0,
        sample_every=4,
        samples_shown=2,
        save_every=0,
    )
    values.update(overrides)
    return PPOConfig(**values)  # type: ignore[arg-type]


def one_iteration(batch_size: int, **overrides: object) -> PPOConfig:
    """small_config for one PPO iteration: one epoch over one mini-batch of `batch_size`
    queries, no samples shown (unless `overrides` says otherwise)."""
    one: dict[str, object] = dict(
        iterations=1, batch_size=batch_size, mini_batch_size=batch_size, ppo_epochs=1
    )
    return small_config(**one, **{"sample_every": 0, **overrides})


def train_in(
    root: Path, cfg: PPOConfig, policy: Path, reward: Path, prompts: list[Conversation], **kw: Any
) -> Summary:
    """trainer.ppo.train.train on one torch thread, writing under `root` (work/, out/)."""
    places: dict[str, Any] = dict(
        policy_path=policy, reward_path=reward, work_dir=root / "work", output_dir=root / "out"
    )
    with one_thread():
        return train(cfg, prompts=prompts, **places, **kw)


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch_args(policy: Path, reward: Path, prompts_file: Path, *sets: str) -> list[str]:
    """`python -m trainer.ppo.launch`'s arguments for these models, PROMPT_TEXTS written to
    `prompts_file`, and each "FIELD=VALUE" of `sets` as a --set."""
    prompts_file.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPT_TEXTS))
    args = ["--policy", str(policy), "--reward", str(reward), "--prompts", str(prompts_file)]
    return args + [word for item in sets for word in ("--set", item)]
