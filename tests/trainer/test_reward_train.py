"""Short CPU runs of the training loop on a tiny GPT-2 that must measurably learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from app.chat import from_text
from app.ranking import split_of
from tests.factories import words
from tests.tiny import save_tiny_policy, tiny_loop_config
from trainer.reward.eval import group_scores
from trainer.reward.model import Group, load_reward_model, score_replies
from trainer.reward.train import RewardConfig, split_groups, step_plan, train

WORDS = words(
    "apple river stone cloud green quick lazy tall small bright dark old new warm cold house "
    "tree road bird fish"
)
MARKER = "excellent"


def synthetic_groups(n: int, k: int = 4, seed: int = 0) -> list[Group]:
    """Completions with the marker word rank above those without (ties within each side)."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n):
        prompt = " ".join(rng.choices(WORDS, k=4))
        comps, ranks = [], []
        for j in range(k):
            words = rng.choices(WORDS, k=rng.randint(2, 5))
            good = j % 2 == 0
            if good:
                words.insert(rng.randint(0, len(words)), MARKER)
            comps.append(" ".join(words))
            ranks.append(1 if good else 2)
        order = list(range(k))
        rng.shuffle(order)
        groups.append(
            Group(
                messages=from_text(prompt),
                completions=tuple(comps[o] for o in order),
                rankings=(tuple(ranks[o] for o in order),),
            )
        )
    return groups


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(
        tmp_path_factory.mktemp("policy") / "tiny", [" ".join(WORDS + [MARKER])], hidden=32, layers=2
    )


def test_split_is_the_exports_by_prompt() -> None:
    """A group keeps the split its export row gave it; one without (synthetic data, files of
    other origins) gets app.ranking.split_of of its prompt, as the export would give it."""
    groups = synthetic_groups(400)
    groups += [Group(g.messages, g.completions, g.rankings) for g in groups[:40]]  # same prompts again
    sides = split_groups(groups)
    assert sum(map(len, sides.values())) == len(groups)
    prompts = {name: {g.prompt for g in gs} for name, gs in sides.items()}
    assert prompts["train"].isdisjoint(prompts["validation"]) and prompts["train"].isdisjoint(prompts["test"])
    assert all(split_of(g.prompt) == name for name, gs in sides.items() for g in gs)
    assert 0 < len(sides["validation"]) < len(groups) * 0.15
    assert split_groups(groups) == sides
    pinned = [Group(g.messages, g.completions, g.rankings, split="validation") for g in groups[:5]]
    assert split_groups(pinned)["validation"] == pinned
    with pytest.raises(ValueError, match="split: one of"):
        split_groups([Group(from_text("p"), ("a", "b"), ((1, 2),), split="dev")])


def test_cosine_decay_ends_at_a_tenth_of_the_rate_after_one_epoch() -> None:
    from trainer.reward.train import cosine_to

    cfg = RewardConfig()
    assert (cfg.epochs, cfg.min_lr_ratio) == (1, 0.1)
    factor = cosine_to(cfg.min_lr_ratio, 10)
    assert [factor(0), factor(5), factor(10), factor(12)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert all(factor(i) > factor(i + 1) for i in range(10))


def test_step_plan_covers_every_group_once_per_epoch() -> None:
    plan = step_plan(23, RewardConfig(batch_size=4, grad_accum=2, epochs=2), world=1)
    flat = [i for step in plan for micro in step for i in micro]
    assert sorted(flat) == sorted(list(range(23)) * 2)
    assert all(len(step) <= 2 for step in plan)


@pytest.mark.slow
def test_learns_a_marker_word_on_held_out_prompts(base_model: Path, tmp_path: Path) -> None:
    cfg = tiny_loop_config(
        RewardConfig, base_model, epochs=1, batch_size=8, max_length=32, eval_every=10, checkpoint_every=0
    )
    seen: list[tuple[int, dict]] = []
    result = train(
        cfg, synthetic_groups(240), out_dir=tmp_path / "rm", work_dir=tmp_path / "work", hooks=_hooks(seen)
    )
    print(result.metrics)
    assert result.metrics["val_accuracy"] >= 0.95, result.metrics
    assert any("val_accuracy" in v for _, v in seen) and any("train_loss" in v for _, v in seen)

    # Saved whole, with its config, manifest, metrics, and the normalisation in its config.
    files = {p.name for p in result.path.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "reward_config.json",
        "data_manifest.json",
        "metrics.json",
    } <= files
    assert not (tmp_path / ".rm.tmp").exists()
    model, tok = load_reward_model(str(result.path))
    held_out = synthetic_groups(30, seed=99)
    convs = [g.messages for g in held_out for _ in g.completions]
    comps = [c for g in held_out for c in g.completions]
    s = torch.tensor(score_replies(model, tok, convs, comps, max_length=32))
    good = torch.tensor([MARKER in c for c in comps])
    assert s[good].mean() > s[~good].mean() + 1.0
    # The training completions (the reference here) have mean 0 and std 1 after normalisation.
    train_groups = split_groups(synthetic_groups(240))["train"]
    ref = group_scores(model, tok, train_groups, max_length=32)
    assert abs(ref.mean().item()) < 1e-3 and abs(ref.std().item() - 1) < 1e-3
    assert json.loads((result.path / "metrics.json").read_text())["val_accuracy"] >= 0.95


def _hooks(seen: list):  # type: ignore[no-untyped-def]
    from trainer.reward.train import Hooks

    return Hooks(metric=lambda step, **v: seen.append((step, v)))


@pytest.mark.slow
def test_module_entry_point_trains_on_a_groups_export(base_model: Path, tmp_path: Path) -> None:
    """`python -m trainer.reward.launch` (what `accelerate launch -m` runs) on a `groups` export."""
    from trainer.reward.launch import main

    rows = [
        {
            "task_id": i,
            "prompt_id": i,
            "prompt": g.prompt,
            "completions": [{"completion_id": j, "text": c} for j, c in enumerate(g.completions)],
            "rankings": [
                {"labeler": "a", "ranks": list(g.rankings[0])},
                {"labeler": "b", "ranks": [None] * g.k},
            ],
        }  # incomplete: not used
        for i, g in enumerate(synthetic_groups(40))
    ]
    groups = tmp_path / "groups.jsonl"
    groups.write_text("\n".join(json.dumps(r) for r in rows))
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"base_model": str(base_model), "lr": 3e-3, "batch_size": 4, "max_length": 32})
    )
    main(
        ["--groups", str(groups), "--config", str(config), "--out", str(tmp_path / "rm"), "--set", "epochs=2"]
    )
    metrics = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    assert metrics["train_pairs"] == 4 * metrics["train_prompts"]  # one ranking per task
    assert json.loads((tmp_path / "rm" / "reward_config.json").read_text())["epochs"] == 2
    with pytest.raises(ValueError, match="unknown reward config field"):
        main(["--groups", str(groups), "--out", str(tmp_path / "x"), "--set", "nope=1"])
