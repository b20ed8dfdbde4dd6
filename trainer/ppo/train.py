"""The PPO loop (InstructGPT step 3): rollout, score, update, repeat; with checkpoints and resume.

Reads top to bottom: config, models, then per iteration the three phases
  1. generate  — sample responses from the policy (temperature 1, no top-k/top-p)
  2. score     — old/ref log-probs, values, reward-model scores, shaped rewards, GAE
  3. update    — clipped PPO on policy and value, plus γ·∇ LM loss on pretraining text (PPO-ptx)
Runs single-process on CPU or one GPU, and unchanged under `accelerate launch` (each process
takes its share of the batch; only the main process writes files).

Free of the database: trainer/ppo/job.py adapts it to a job. `python -m trainer.ppo.launch`
runs it from files (for `accelerate launch` on several GPUs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from trainer.ppo import losses as ppo
from trainer.ppo import rollout as ro
from trainer.ppo.rollout import RewardModelScorer, Rollout, read_normalization  # noqa: F401  (re-exported)

CONFIG_FILE = "ppo_config.json"


@dataclass
class PPOConfig:
    """PPO hyperparameters. Defaults follow InstructGPT App. C.4 where the paper gives them."""

    iterations: int = 500  # rollout+update rounds; the paper ran 256k episodes = 500 × 512
    batch_size: int = 512  # episodes (prompt, response) per rollout, over all processes (paper: 512)
    mini_batch_size: int = 64  # episodes per optimizer step (paper: 64)
    ppo_epochs: int = 1  # passes over each rollout (paper: a single inner epoch)
    learning_rate: float = 9.65e-6  # policy Adam rate, constant after warm-up (paper, 1.3B policy)
    value_learning_rate: float = 9.65e-6  # value network's Adam rate
    warmup_iterations: int = 10  # linear warm-up from a tenth of the rate (paper: 10 iterations)
    max_new_tokens: int = 64  # response length cap; a response cut here "never ended"
    max_prompt_tokens: int = 512  # longer prompts keep their last tokens
    temperature: float = 1.0  # sampling temperature; log-probs use logits / temperature too
    beta: float = 0.02  # KL coefficient β of −β·(log π − log π_ref) per token (paper: 0.02)
    kl_target: float | None = None  # set to adapt β towards this KL (Ziegler et al.); None: fixed β
    kl_horizon: float = 10_000  # episodes over which the adaptive controller closes the gap
    gamma: float = 1.0  # GAE discount (paper: none, γ = 1)
    lam: float = 0.95  # GAE λ
    clip_ratio: float = 0.2  # policy ratio clip (paper: 0.2)
    clip_value: float = 0.2  # value clip around the rollout's values
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response without EOS
    ptx_coef: float = 0.0  # PPO-ptx γ; 0 turns it off (paper's PPO-ptx: 27.8)
    ptx_batch_size: int = 8  # pretraining texts per optimizer step (paper: 8× the RL episodes)
    ptx_max_tokens: int = 256  # pretraining texts are cut to this many tokens
    max_grad_norm: float = 1.0  # gradient clipping, policy and value alike
    seed: int = 0  # one seed: prompt order, sampling, minibatch order
    sample_every: int = 10  # publish a table of sample responses every N iterations (0: never)
    samples_shown: int = 4  # rows of that table
    save_every: int = 10  # checkpoint every N iterations (0: never; resume then starts over)
    mixed_precision: str = "auto"  # "bf16" on GPU, "no" on CPU; or set explicitly

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PPOConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown PPO setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (1 <= self.mini_batch_size <= self.batch_size, "mini_batch_size must be in 1..batch_size"),
            (self.ppo_epochs >= 1, "ppo_epochs must be at least 1"),
            (self.temperature > 0, "temperature must be positive"),
            (self.beta >= 0, "beta must be >= 0"),
            (self.ptx_coef >= 0, "ptx_coef must be >= 0"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.kl_target is None or self.kl_target > 0, "kl_target must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Reporter(Protocol):
    """Where the loop reports: the job (database) or the terminal. progress() may raise to cancel."""

    def progress(self, fraction: float, message: str) -> None: ...
    def metric(self, step: int, **values: float) -> None: ...
    def samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...
    def log(self, line: str) -> None: ...


class QuietReporter:
    def progress(self, fraction: float, message: str) -> None: ...
    def metric(self, step: int, **values: float) -> None: ...
    def samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...
    def log(self, line: str) -> None: ...


Scorer = Callable[[Rollout], torch.Tensor]  # rollout -> (B,) normalised scores


@dataclass
class Summary:
    iterations: int
    first_mean_reward: float
    last_mean_reward: float
    last_kl: float
    last_beta: float
    resumed_from: int
    history: dict[str, list[float]] = field(default_factory=dict)


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=ro.position_ids(mask))
    logits = out.logits[:, :-1, :].float()  # (B, T-1, V)
    target, tmask = ids[:, 1:], mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
    ).view_as(tmask)
    return ppo.masked_mean(nll, tmask)


def lm_loss_on(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens: int = 256,
    device: torch.device | str = "cpu",
) -> float:
    """Mean token LM loss of `model` on `texts` (the PPO-ptx regulariser's target; tests, metrics)."""
    ids, mask = _tokenize_texts(tokenizer, texts, max_tokens, device)
    with torch.no_grad():
        return float(_lm_loss(model, ids, mask))


def _tokenize_texts(
    tokenizer: Any, texts: Sequence[str], max_tokens: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [
        (tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_tokens]
        for t in texts
    ]
    return ro.left_pad(seqs, tokenizer.pad_token_id, device)


def _seeded(seed: int, *salt: int) -> torch.Generator:
    value = seed
    for s in salt:
        value = value * 1_000_003 + s
    return torch.Generator().manual_seed(value % (2**63))


def train(
    cfg: PPOConfig,
    *,
    policy_path: str | Path,
    reward_path: str | Path,
    prompts: Sequence[str],
    work_dir: Path,
    output_dir: Path,
    ptx_texts: Sequence[str] = (),
    reporter: Reporter | None = None,
    scorer: Scorer | None = None,
) -> Summary:
    """Run PPO and write the new policy to `output_dir` (only once it is whole).

    Checkpoints go to `work_dir/checkpoint`; if one is there the run resumes from it. The
    value network starts from `reward_path`; scores come from it too unless `scorer` is given
    (tests pass a rule-based stand-in for a trained reward model).
    """
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.reward.model import is_decoder, load_reward_model

    cfg.validate()
    reporter = reporter or QuietReporter()
    if not prompts:
        raise ValueError("no prompts to train on: choose prompt sets that have prompts")
    if cfg.ptx_coef > 0 and not ptx_texts:
        raise ValueError(
            "ptx_coef > 0 needs pretraining texts (a JSON Lines file, or the chosen completions)"
        )
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(mixed_precision=precision)
    device = acc.device
    frozen_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    # --- models -----------------------------------------------------------------------------
    ckpt = work_dir / "checkpoint"
    resuming = (ckpt / "state.pt").is_file()
    start_policy = ckpt / "policy" if resuming else Path(policy_path)
    start_value = ckpt / "value" if resuming else Path(reward_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_id, pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)

    policy = AutoModelForCausalLM.from_pretrained(start_policy)
    # Same weights dtype as the policy (autocast does the bf16 part), so at the start π = π_ref
    # exactly and the KL measures training, not rounding.
    reference = AutoModelForCausalLM.from_pretrained(policy_path)
    value: Any
    value, _ = load_reward_model(str(start_value), tokenizer_source=str(policy_path))
    if value.config.vocab_size != policy.config.vocab_size:
        raise ValueError(
            f"the reward model ({reward_path}) has a vocabulary of {value.config.vocab_size}, "
            f"the policy {policy.config.vocab_size}: the value network starts from the "
            "reward model, so both must share the policy's tokenizer"
        )
    if not is_decoder(value):
        raise ValueError(
            f"the reward model ({reward_path}) is not a decoder with a `score` head; the "
            "value network starts from it and needs a value at every token"
        )
    value.config.pad_token_id = pad_id
    value = ro.TokenValueModel(value)
    for net in (policy, reference, value):
        disable_dropout(net)
        net.eval()  # dropout off everywhere; eval() does not stop gradients
    reference.requires_grad_(False)
    reference.to(device)
    if scorer is None:
        reward_model, _ = load_reward_model(str(reward_path))
        reward_model.to(device=device, dtype=frozen_dtype).eval().requires_grad_(False)
        shift, scale = read_normalization(reward_path, reward_model.config)
        scorer = RewardModelScorer(reward_model, eos_id, shift, scale)
        reporter.log(f"reward normalisation: shift {shift:.4f}, scale {scale:.4f}")

    opt_p = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
    opt_v = torch.optim.AdamW(value.parameters(), lr=cfg.value_learning_rate, eps=1e-5, weight_decay=0.0)
    policy, value, opt_p, opt_v = acc.prepare(policy, value, opt_p, opt_v)
    kl_ctl = ppo.kl_controller(cfg.beta, cfg.kl_target, cfg.kl_horizon)

    start_it, history = 0, {}
    if resuming:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        opt_p.load_state_dict(state["opt_policy"])
        opt_v.load_state_dict(state["opt_value"])
        kl_ctl.load_state_dict(state["kl"])
        start_it, history = int(state["iteration"]), state["history"]
        reporter.log(f"resumed from the checkpoint of iteration {start_it}")

    # Tokenised as the sampler does (with the tokenizer's own special tokens, e.g. a BOS), cut from
    # the left so that prompt + response fit the model's positions.
    positions = getattr(acc.unwrap_model(policy).config, "max_position_embeddings", None) or getattr(
        acc.unwrap_model(policy).config, "n_positions", None
    )
    room = (
        cfg.max_prompt_tokens if not positions else min(cfg.max_prompt_tokens, positions - cfg.max_new_tokens)
    )
    if room < 1:
        raise ValueError(
            f"max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in {positions} positions"
        )
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"  # keeps a BOS, cuts the text
    prompt_ids = [tokenizer(p, truncation=True, max_length=room)["input_ids"] or [eos_id] for p in prompts]
    tokenizer.truncation_side = side
    per_process = max(1, cfg.batch_size // acc.num_processes)
    mini = max(1, cfg.mini_batch_size // acc.num_processes)
    ptx = _tokenize_texts(tokenizer, ptx_texts, cfg.ptx_max_tokens, "cpu") if cfg.ptx_coef > 0 else None
    unwrapped = acc.unwrap_model(policy)

    for it in range(start_it, cfg.iterations):
        lr_scale = 0.1 + 0.9 * min(1.0, it / cfg.warmup_iterations) if cfg.warmup_iterations else 1.0
        for opt, base in ((opt_p, cfg.learning_rate), (opt_v, cfg.value_learning_rate)):
            for group in opt.param_groups:
                group["lr"] = base * lr_scale

        # --- 1. generate ------------------------------------------------------------------------
        t0 = time.perf_counter()
        pick = torch.randint(
            0, len(prompt_ids), (per_process,), generator=_seeded(cfg.seed, it, acc.process_index)
        ).tolist()
        query, query_mask = ro.left_pad([prompt_ids[i] for i in pick], pad_id, device)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + it * 31 + acc.process_index)
        with acc.autocast():
            batch = ro.generate(
                unwrapped,
                query,
                query_mask,
                max_new_tokens=cfg.max_new_tokens,
                eos_id=eos_id,
                pad_id=pad_id,
                temperature=cfg.temperature,
                generator=gen,
            )
        _sync(device)
        t1 = time.perf_counter()

        # --- 2. score ---------------------------------------------------------------------------
        mask = batch.response_mask  # (B, R)
        with torch.no_grad(), acc.autocast():
            old_logprobs, _ = ro.policy_forward(policy, batch, cfg.temperature)
            ref_logprobs, _ = ro.policy_forward(reference, batch, cfg.temperature)
            old_values = ro.value_forward(value, batch) * mask
            raw_scores = scorer(batch).float()  # (B,)
        finished = ppo.has_eos(batch.response, mask, eos_id)
        scores = ppo.apply_missing_eos_penalty(raw_scores, finished, cfg.missing_eos_penalty)
        old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
        rewards, kl = ppo.shape_rewards(old_logprobs, ref_logprobs, scores, mask, kl_ctl.beta)
        advantages, returns = ppo.gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = ppo.masked_whiten(advantages, mask)
        _sync(device)
        t2 = time.perf_counter()

        # --- 3. update --------------------------------------------------------------------------
        stats: dict[str, list[float]] = {
            k: []
            for k in (
                "policy_loss",
                "value_loss",
                "clip_frac",
                "value_clip_frac",
                "approx_kl",
                "entropy",
                "ptx_loss",
            )
        }
        order_gen = _seeded(cfg.seed, it, 99, acc.process_index)
        for _epoch in range(cfg.ppo_epochs):
            order = torch.randperm(per_process, generator=order_gen).tolist()
            for start in range(0, per_process, mini):
                idx = torch.tensor(order[start : start + mini], device=device)
                mb = Rollout(
                    query=batch.query[idx],
                    query_mask=batch.query_mask[idx],
                    response=batch.response[idx],
                    response_mask=mask[idx],
                )
                m = mask[idx]
                with acc.autocast():
                    new_logprobs, logits = ro.policy_forward(policy, mb, cfg.temperature)
                    pl = ppo.policy_loss(new_logprobs, old_logprobs[idx], advantages[idx], m, cfg.clip_ratio)
                    new_values = ro.value_forward(value, mb)
                    vl, vclip = ppo.value_loss(new_values, old_values[idx], returns[idx], m, cfg.clip_value)
                opt_p.zero_grad(set_to_none=True)
                opt_v.zero_grad(set_to_none=True)
                acc.backward(pl.loss + vl)  # separate networks: each gets only its own loss's gradient
                if ptx is not None:
                    # PPO-ptx: γ·∇(LM loss) lands in the same gradient buffers before the step.
                    rows = torch.randint(0, ptx[0].shape[0], (cfg.ptx_batch_size,), generator=order_gen)
                    ids, pmask = ptx[0][rows].to(device), ptx[1][rows].to(device)
                    keep = pmask.sum(0) > 0  # drop columns that are padding in every row
                    with acc.autocast():
                        lm = _lm_loss(policy, ids[:, keep], pmask[:, keep])
                    acc.backward(cfg.ptx_coef * lm)
                    stats["ptx_loss"].append(float(lm.detach()))
                acc.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                acc.clip_grad_norm_(value.parameters(), cfg.max_grad_norm)
                opt_p.step()
                opt_v.step()
                with torch.no_grad():
                    ent = ppo.masked_mean(ppo.entropy_from_logits(logits, cfg.temperature), m)
                for name, v in (
                    ("policy_loss", pl.loss),
                    ("value_loss", vl),
                    ("clip_frac", pl.clip_frac),
                    ("value_clip_frac", vclip),
                    ("approx_kl", pl.approx_kl),
                    ("entropy", ent),
                ):
                    stats[name].append(float(v.detach()))
        _sync(device)
        t3 = time.perf_counter()

        # --- metrics, β, samples, checkpoint ----------------------------------------------------
        seq_kl = kl.sum(dim=1)  # (B,) KL of each response to the reference
        gathered = acc.gather_for_metrics(
            torch.stack([raw_scores, seq_kl, mask.sum(dim=1), (~finished).float()], dim=1)
        )  # (B_all, 4)
        mean_reward, mean_kl, length, no_eos = gathered.mean(dim=0).tolist()
        kl_ctl.update(mean_kl, cfg.batch_size)
        tokens = float(mask.sum()) * acc.num_processes
        metrics = {
            "mean_reward": mean_reward,
            "kl": mean_kl,
            "beta": kl_ctl.beta,
            "explained_variance": ppo.explained_variance(old_values, returns, mask),
            "response_length": length,
            "no_eos_share": no_eos,
            "time_generate": t1 - t0,
            "time_score": t2 - t1,
            "time_update": t3 - t2,
            "tokens_per_second": tokens / max(t3 - t0, 1e-9),
            **{k: sum(v) / len(v) for k, v in stats.items() if v},
        }
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        done = it + 1
        if acc.is_main_process:
            reporter.metric(done, **metrics)
            if cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.iterations):
                reporter.samples(done, _sample_rows(tokenizer, batch, scores, cfg.samples_shown, done))
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.iterations:
                _save_checkpoint(
                    ckpt, acc, policy, value, tokenizer, opt_p, opt_v, kl_ctl, done, history, cfg
                )
            # The cancel point of a job: after the checkpoint, so a resumed run loses no iteration.
            reporter.progress(
                done / cfg.iterations,
                f"iteration {done}/{cfg.iterations}: reward {mean_reward:.3f}, KL {mean_kl:.3f}",
            )

    # --- the new policy, written whole, then moved into place -----------------------------------
    acc.wait_for_everyone()
    if acc.is_main_process:
        final = work_dir / "final"
        if final.exists():
            shutil.rmtree(final)
        acc.unwrap_model(policy).save_pretrained(final)
        tokenizer.save_pretrained(final)
        (final / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(final, output_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    rewards_seen = history.get("mean_reward", [float("nan")])
    return Summary(
        iterations=cfg.iterations,
        first_mean_reward=rewards_seen[0],
        last_mean_reward=rewards_seen[-1],
        last_kl=history.get("kl", [float("nan")])[-1],
        last_beta=kl_ctl.beta,
        resumed_from=start_it,
        history=history,
    )


def checkpoint_iteration(work_dir: Path) -> int:
    """The iteration a run in `work_dir` would resume from (0: none)."""
    state = work_dir / "checkpoint" / "state.pt"
    if not state.is_file():
        return 0
    return int(torch.load(state, map_location="cpu", weights_only=False)["iteration"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample_rows(
    tokenizer: Any, batch: Rollout, scores: torch.Tensor, n: int, step: int
) -> list[dict[str, Any]]:
    rows = []
    for b in range(min(n, batch.query.shape[0])):
        q = batch.query[b][batch.query_mask[b] > 0]
        r = batch.response[b][batch.response_mask[b] > 0]
        rows.append(
            {
                "step": step,
                "prompt": tokenizer.decode(q, skip_special_tokens=True),
                "response": tokenizer.decode(r, skip_special_tokens=True),
                "score": round(float(scores[b]), 4),
            }
        )
    return rows


def _save_checkpoint(
    ckpt: Path,
    acc: Any,
    policy: Any,
    value: Any,
    tokenizer: Any,
    opt_p: Any,
    opt_v: Any,
    kl_ctl: Any,
    iteration: int,
    history: dict[str, list[float]],
    cfg: PPOConfig,
) -> None:
    """Written beside the old one and swapped in, so a crash mid-write keeps the previous one."""
    tmp = ckpt.with_name("checkpoint.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    acc.unwrap_model(policy).save_pretrained(tmp / "policy")
    tokenizer.save_pretrained(tmp / "policy")
    acc.unwrap_model(value).model.save_pretrained(tmp / "value")
    torch.save(
        {
            "opt_policy": opt_p.state_dict(),
            "opt_value": opt_v.state_dict(),
            "kl": kl_ctl.state_dict(),
            "iteration": iteration,
            "history": history,
        },
        tmp / "state.pt",
    )
    (tmp / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
    old = ckpt.with_name("checkpoint.old")
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)
