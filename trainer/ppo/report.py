"""After each PPO iteration: metrics over every process, the KL controller's step, samples,
checkpoints written aside and swapped in; at the end the new policy, written whole."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from app.chat import as_text
from trainer.ppo import losses as ppo
from trainer.ppo import rollout as ro
from trainer.ppo.config import CONFIG_FILE, PPOConfig
from trainer.ppo.phases import Scored
from trainer.ppo.rollout import Rollout
from trainer.ppo.setup import Reporter, Run


def report(
    cfg: PPOConfig,
    run: Run,
    batch: Rollout,
    s: Scored,
    stats: dict[str, list[float]],
    it: int,
    times: list[float],
    ckpt: Path,
    reporter: Reporter,
) -> None:
    """Metrics over every process, the KL controller's step, samples, checkpoint, progress."""
    acc = run.acc
    seq_kl = s.kl.sum(dim=1)  # (B,) KL of each response to the reference
    gathered = acc.gather_for_metrics(
        torch.stack([s.raw_scores, seq_kl, s.mask.sum(dim=1), (~s.finished).float()], dim=1)
    )  # (B_all, 4)
    mean_reward, mean_kl, length, no_eos = gathered.mean(dim=0).tolist()
    run.kl_ctl.update(mean_kl, cfg.batch_size)
    t0, t1, t2, t3 = times
    metrics = {
        "mean_reward": mean_reward,
        "kl": mean_kl,
        "beta": run.kl_ctl.beta,
        "explained_variance": ppo.explained_variance(s.old_values, s.returns, s.mask),
        "response_length": length,
        "no_eos_share": no_eos,
        "time_generate": t1 - t0,
        "time_score": t2 - t1,
        "time_update": t3 - t2,
        "tokens_per_second": float(s.mask.sum()) * acc.num_processes / max(t3 - t0, 1e-9),
        **{k: sum(v) / len(v) for k, v in stats.items() if v},
    }
    metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
    for k, v in metrics.items():
        run.history.setdefault(k, []).append(v)
    done = it + 1
    if acc.is_main_process:
        reporter.metric(done, **metrics)
        if cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.iterations):
            reporter.samples(done, sample_rows(run, batch, s.scores, cfg.samples_shown, done))
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.iterations:
            save_checkpoint(ckpt, run, done, cfg)
        # The cancel point of a job: after the checkpoint, so a resumed run loses no iteration.
        reporter.progress(
            done / cfg.iterations,
            f"iteration {done}/{cfg.iterations}: reward {mean_reward:.3f}, KL {mean_kl:.3f}",
        )


def sample_rows(run: Run, batch: Rollout, scores: torch.Tensor, n: int, step: int) -> list[dict[str, Any]]:
    """The first n episodes as people read them: the conversation as text, the reply as stored."""
    replies = ro.reply_texts(run.tokenizer, batch, run.stop_ids)
    return [
        {"step": step, "prompt": as_text(conv), "response": reply, "score": round(float(scores[b]), 4)}
        for b, (conv, reply) in enumerate(zip(batch.convs[:n], replies, strict=False))
    ]


def save_checkpoint(ckpt: Path, run: Run, iteration: int, cfg: PPOConfig) -> None:
    """Written beside the old one and swapped in, so a crash mid-write keeps the previous one."""
    tmp = ckpt.with_name("checkpoint.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    run.acc.unwrap_model(run.policy).save_pretrained(tmp / "policy")
    run.tokenizer.save_pretrained(tmp / "policy")
    run.acc.unwrap_model(run.value).model.save_pretrained(tmp / "value")
    torch.save(
        {
            "opt_policy": run.opt_p.state_dict(),
            "opt_value": run.opt_v.state_dict(),
            "kl": run.kl_ctl.state_dict(),
            "iteration": iteration,
            "history": run.history,
        },
        tmp / "state.pt",
    )
    (tmp / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
    old = ckpt.with_name("checkpoint.old")
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def save_final(cfg: PPOConfig, run: Run, work_dir: Path, output_dir: Path) -> None:
    """The new policy, written whole beside the target, then moved into place."""
    run.acc.wait_for_everyone()
    if not run.acc.is_main_process:
        return
    final = work_dir / "final"
    if final.exists():
        shutil.rmtree(final)
    run.acc.unwrap_model(run.policy).save_pretrained(final)
    run.tokenizer.save_pretrained(final)
    (final / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(final, output_dir)
    shutil.rmtree(work_dir, ignore_errors=True)


def checkpoint_iteration(work_dir: Path) -> int:
    """The iteration a run in `work_dir` would resume from (0: none)."""
    state = work_dir / "checkpoint" / "state.pt"
    if not state.is_file():
        return 0
    return int(torch.load(state, map_location="cpu", weights_only=False)["iteration"])
