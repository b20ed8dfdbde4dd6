"""The distributed path runs: reward-model, SFT and PPO training under two processes (gloo on the CPU,
what `accelerate launch` starts on several GPUs) match one process at the same global batch,
and only the main process writes the model and the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.ranking import split_of
from tests.tiny import save_tiny_policy
from tests.trainer.ppo_fixtures import launch_args, make_models
from tests.trainer.test_reward_train import MARKER, WORDS, synthetic_groups
from tests.trainer.test_sft import demos, write_demos

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _run(module: str, args: list[str], *, processes: int) -> list[str]:
    """`python -m module` (one process) or `accelerate launch` of it on `processes` CPU processes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        # --multi_gpu starts one process per rank through torchrun; ACCELERATE_USE_CPU makes each a
        # CPU (gloo) rank. (`--cpu` alone would start a single process.)
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [
            str(ACCELERATE),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            module,
            *args,
        ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith("{")]


def test_reward_model_on_two_processes_matches_one(tmp_path: Path) -> None:
    base = save_tiny_policy(tmp_path / "tiny", [" ".join(WORDS + [MARKER])], hidden=32, layers=2)
    rows = [
        {
            "prompt": g.prompt,
            "completions": [{"text": c} for c in g.completions],
            "rankings": [{"labeler": "a", "ranks": list(g.rankings[0])}],
        }
        for g in synthetic_groups(48)
    ]
    # Whole global batches only: a last, short batch is dropped under two processes when it
    # cannot give each a group, which would make the plans differ for a reason of no interest.
    train = [r for r in rows if split_of(str(r["prompt"])) == "train"]
    rows = [r for r in rows if split_of(str(r["prompt"])) != "train"] + train[: len(train) // 4 * 4]
    groups = tmp_path / "groups.jsonl"
    groups.write_text("\n".join(json.dumps(r) for r in rows))
    common = [
        "--groups",
        str(groups),
        "--set",
        f'base_model="{base}"',
        "--set",
        "lr=0.003",
        "--set",
        "max_length=32",
    ]
    one = _run(
        "trainer.reward.launch",
        [*common, "--out", str(tmp_path / "one"), "--set", "batch_size=4"],
        processes=1,
    )
    two = _run(
        "trainer.reward.launch",
        [*common, "--out", str(tmp_path / "two"), "--set", "batch_size=2"],
        processes=2,
    )
    m1, m2 = json.loads(one[-1]), json.loads(two[-1])
    summaries = [line for line in two if "train_prompts" in line]
    assert len(summaries) == 1  # the main process alone reports (and writes)
    assert m1["steps"] == m2["steps"] and m1["train_pairs"] == m2["train_pairs"]
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=0.05, abs=0.02)
    w1, w2 = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < 5e-3, worst  # the same global batches, summed in another order
    assert not list(tmp_path.glob("two*.work")) or not any(tmp_path.glob("two*.work/*"))


def test_sft_on_two_processes_matches_one(tmp_path: Path, tiny_chat_model_path: Path) -> None:
    """SFT on two processes (each its share of every global batch, the loss summed over reply
    tokens and divided by the step's tokens) takes the same steps to the same weights as one."""
    data = write_demos(tmp_path / "train.jsonl", demos(0, 16))
    val = write_demos(tmp_path / "val.jsonl", demos(40, 4))
    common = ["--data", str(data), "--validation", str(val), "--set", f"base_model={tiny_chat_model_path}"]
    common += ["--set", "epochs=1", "--set", "lr=0.003"]
    # batch_size is per process, as for the reward model: 2 × 2 is the one process's 4.
    one = _run(
        "trainer.sft.launch", [*common, "--out", str(tmp_path / "one"), "--set", "batch_size=4"], processes=1
    )
    two = _run(
        "trainer.sft.launch", [*common, "--out", str(tmp_path / "two"), "--set", "batch_size=2"], processes=2
    )
    m1, m2 = json.loads(one[-1]), json.loads(two[-1])
    # The main process alone prints (its progress and the summary) and writes the policy.
    assert len(two) == len(one) and sum('"out"' in line for line in two) == 1
    assert m1["steps"] == m2["steps"] == 4
    assert m2["val_loss_last"] == pytest.approx(m1["val_loss_last"], rel=0.02)
    w1, w2 = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert w1.keys() == w2.keys() and worst < 5e-3, worst


def test_ppo_on_two_processes_runs_and_only_the_main_process_writes(tmp_path: Path) -> None:
    policy, reward = make_models(tmp_path / "models")
    sets = ["iterations=3", "batch_size=8", "mini_batch_size=4", "max_new_tokens=8", "save_every=0"]
    args = launch_args(policy, reward, tmp_path / "prompts.jsonl", *sets, "sample_every=0")
    one = _run("trainer.ppo.launch", [*args, "--out", str(tmp_path / "one")], processes=1)
    two = _run("trainer.ppo.launch", [*args, "--out", str(tmp_path / "two")], processes=2)
    assert len(one) == 1 and len(two) == 1  # one summary line: the main process's
    s1, s2 = json.loads(one[0]), json.loads(two[0])
    # Each rank samples its own half of the batch, so the runs differ in their draws; the
    # reward model and the starting policy are the same, so the means stay close.
    assert abs(s1["first_mean_reward"] - s2["first_mean_reward"]) < 0.5
    assert s1["last_kl"] < 0.05 and s2["last_kl"] < 0.05
    for out in ("one", "two"):
        saved = load_file(tmp_path / out / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in saved.values())
        assert json.loads((tmp_path / out / "ppo_config.json").read_text())["batch_size"] == 8
