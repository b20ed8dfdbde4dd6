"""The PPO loop (InstructGPT step 3): rollout, score, update, repeat; with checkpoints and resume.

Reads top to bottom: `train` sets up the models (`_setup`), then per iteration the three phases
  1. generate  — sample responses from the policy (temperature 1, no top-k/top-p)
  2. score     — old/ref log-probs, values, reward-model scores, shaped rewards, GAE
  3. update    — clipped PPO on policy and value, plus γ·∇ LM loss on pretraining text (PPO-ptx)
Runs single-process on CPU or one GPU, and unchanged under `accelerate launch` (each process
takes its share of the batch; only the main process writes files).

Prompts are conversations, seen only through trainer.render: rollouts start from the policy's
chat template (render.generation_batch) and stop at render.stop_token_ids; the reward model
reads (conversation, decoded response) through its own tokenizer's template (RewardModelScorer).
PPO-ptx text stays plain text: it is language-model loss on documents, not chat.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from app.chat import Conversation, as_text
from trainer import render
from trainer.ppo import losses as ppo
from trainer.ppo import rollout as ro
from trainer.ppo.config import CONFIG_FILE, PPOConfig  # noqa: F401  (re-exported)
from trainer.ppo.rollout import RewardModelScorer, Rollout, read_normalization  # noqa: F401  (re-exported)


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
    prompts: Sequence[Conversation],
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
    cfg.validate()
    reporter = reporter or QuietReporter()
    if not prompts:
        raise ValueError("no prompts to train on: choose prompt sets that have prompts")
    if cfg.ptx_coef > 0 and not ptx_texts:
        raise ValueError(
            "ptx_coef > 0 needs pretraining texts (a JSON Lines file, or the chosen completions)"
        )
    ckpt = work_dir / "checkpoint"
    run = _setup(cfg, Path(policy_path), Path(reward_path), ckpt, scorer, reporter)
    room = _prompt_room(cfg, run)
    ptx = _tokenize_texts(run.tokenizer, ptx_texts, cfg.ptx_max_tokens, "cpu") if cfg.ptx_coef > 0 else None

    for it in range(run.start_it, cfg.iterations):
        lr_scale = 0.1 + 0.9 * min(1.0, it / cfg.warmup_iterations) if cfg.warmup_iterations else 1.0
        for opt, base in ((run.opt_p, cfg.learning_rate), (run.opt_v, cfg.value_learning_rate)):
            for group in opt.param_groups:
                group["lr"] = base * lr_scale
        times = [time.perf_counter()]
        batch = _rollout(cfg, run, prompts, room, it)  # 1. generate
        times.append(time.perf_counter())
        scored = _score(cfg, run, batch)  # 2. score
        times.append(time.perf_counter())
        stats = _update(cfg, run, batch, scored, it, ptx)  # 3. update
        times.append(time.perf_counter())
        _report(cfg, run, batch, scored, stats, it, times, ckpt, reporter)  # metrics, β, checkpoint

    _save_final(cfg, run, work_dir, output_dir)
    rewards_seen = run.history.get("mean_reward", [float("nan")])
    return Summary(
        iterations=cfg.iterations,
        first_mean_reward=rewards_seen[0],
        last_mean_reward=rewards_seen[-1],
        last_kl=run.history.get("kl", [float("nan")])[-1],
        last_beta=run.kl_ctl.beta,
        resumed_from=run.start_it,
        history=run.history,
    )


@dataclass
class _Run:
    """What every phase of one run shares: the models, optimizers, KL controller and history."""

    acc: Any
    tokenizer: Any
    policy: Any
    reference: Any
    value: Any
    scorer: Scorer
    opt_p: Any
    opt_v: Any
    kl_ctl: Any
    stop_ids: list[int]  # render.stop_token_ids: EOS and the template's end-of-turn token(s)
    pad_id: int
    per_process: int  # episodes this process rolls out per iteration
    mini: int  # episodes per optimizer step on this process
    start_it: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.acc.device


@dataclass
class _Scored:
    """A rollout's phase-2 tensors: (B, R) per token unless said."""

    mask: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    raw_scores: torch.Tensor  # (B,)
    scores: torch.Tensor  # (B,) after the penalty for a response that never stops
    finished: torch.Tensor  # (B,)
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def _setup(
    cfg: PPOConfig,
    policy_path: Path,
    reward_path: Path,
    ckpt: Path,
    scorer: Scorer | None,
    reporter: Reporter,
) -> _Run:
    """Tokenizer, policy, frozen reference, value network (from the reward model), the scorer,
    optimizers and the KL controller; resumed from `ckpt` when a checkpoint is there."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(mixed_precision=precision)
    resuming = (ckpt / "state.pt").is_file()
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids, pad_id = render.stop_token_ids(tokenizer), render.pad_id(tokenizer)

    policy = AutoModelForCausalLM.from_pretrained(ckpt / "policy" if resuming else policy_path)
    # Same weights dtype as the policy (autocast does the bf16 part), so at the start π = π_ref
    # exactly and the KL measures training, not rounding.
    reference = AutoModelForCausalLM.from_pretrained(policy_path)
    value = _value_network(
        ckpt / "value" if resuming else reward_path, policy_path, reward_path, policy, pad_id
    )
    for net in (policy, reference, value):
        disable_dropout(net)
        net.eval()  # dropout off everywhere; eval() does not stop gradients
    reference.requires_grad_(False)
    reference.to(acc.device)
    if scorer is None:
        frozen_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        scorer = _reward_scorer(reward_path, acc.device, frozen_dtype, tokenizer, reporter)

    opt_p = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
    opt_v = torch.optim.AdamW(value.parameters(), lr=cfg.value_learning_rate, eps=1e-5, weight_decay=0.0)
    policy, value, opt_p, opt_v = acc.prepare(policy, value, opt_p, opt_v)
    run = _Run(
        acc=acc,
        tokenizer=tokenizer,
        policy=policy,
        reference=reference,
        value=value,
        scorer=scorer,
        opt_p=opt_p,
        opt_v=opt_v,
        kl_ctl=ppo.kl_controller(cfg.beta, cfg.kl_target, cfg.kl_horizon),
        stop_ids=stop_ids,
        pad_id=pad_id,
        per_process=max(1, cfg.batch_size // acc.num_processes),
        mini=max(1, cfg.mini_batch_size // acc.num_processes),
    )
    if resuming:
        _resume(run, ckpt, reporter)
    return run


def _reward_scorer(
    reward_path: Path, device: torch.device, dtype: torch.dtype, policy_tokenizer: Any, reporter: Reporter
) -> Scorer:
    """The frozen reward model with its own tokenizer, its scores shifted and scaled as its
    training normalised them, reading at most the max_length it was trained with."""
    from trainer.reward.model import load_reward_model

    reward_model, reward_tokenizer = load_reward_model(str(reward_path))
    reward_model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    shift, scale = read_normalization(reward_path, reward_model.config)
    trained = reward_path / "reward_config.json"
    config = reward_model.config
    max_length = int(
        (json.loads(trained.read_text()).get("max_length") if trained.is_file() else None)
        or getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", None)
        or 512
    )
    reporter.log(f"reward normalisation: shift {shift:.4f}, scale {scale:.4f}; max_length {max_length}")
    return RewardModelScorer(
        reward_model, reward_tokenizer, policy_tokenizer, shift=shift, scale=scale, max_length=max_length
    )


def _resume(run: _Run, ckpt: Path, reporter: Reporter) -> None:
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    run.opt_p.load_state_dict(state["opt_policy"])
    run.opt_v.load_state_dict(state["opt_value"])
    run.kl_ctl.load_state_dict(state["kl"])
    run.start_it, run.history = int(state["iteration"]), state["history"]
    reporter.log(f"resumed from the checkpoint of iteration {run.start_it}")


def _value_network(start: Path, policy_path: Path, reward_path: Path, policy: Any, pad_id: int) -> Any:
    """The value network: the reward model's backbone with a value read at every token."""
    from trainer.reward.model import is_decoder, load_reward_model

    value: Any
    value, _ = load_reward_model(str(start), tokenizer_source=str(policy_path))
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
    return ro.TokenValueModel(value)


def _prompt_room(cfg: PPOConfig, run: _Run) -> int:
    """How many prompt tokens a rollout keeps (cut from the left, render.fit_prompt) so that
    prompt + response fit the model's positions."""
    config = run.acc.unwrap_model(run.policy).config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    room = (
        cfg.max_prompt_tokens if not positions else min(cfg.max_prompt_tokens, positions - cfg.max_new_tokens)
    )
    if room < 1:
        raise ValueError(
            f"max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in {positions} positions"
        )
    return room


def _rollout(cfg: PPOConfig, run: _Run, prompts: Sequence[Conversation], room: int, it: int) -> Rollout:
    """Phase 1: this process's share of prompts, rendered, and the policy's responses to them."""
    acc, device = run.acc, run.device
    pick = torch.randint(
        0, len(prompts), (run.per_process,), generator=_seeded(cfg.seed, it, acc.process_index)
    ).tolist()
    convs = [prompts[i] for i in pick]
    query, query_mask = ro.query_batch(run.tokenizer, convs, room, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + it * 31 + acc.process_index)
    with acc.autocast():
        batch = ro.generate(
            acc.unwrap_model(run.policy),
            query,
            query_mask,
            max_new_tokens=cfg.max_new_tokens,
            stop_ids=run.stop_ids,
            pad_id=run.pad_id,
            temperature=cfg.temperature,
            generator=gen,
            convs=convs,
        )
    _sync(device)
    return batch


def _score(cfg: PPOConfig, run: _Run, batch: Rollout) -> _Scored:
    """Phase 2: old and reference log-probs, values, reward-model scores, shaped rewards, GAE."""
    mask = batch.response_mask  # (B, R)
    with torch.no_grad(), run.acc.autocast():
        old_logprobs, _ = ro.policy_forward(run.policy, batch, cfg.temperature)
        ref_logprobs, _ = ro.policy_forward(run.reference, batch, cfg.temperature)
        old_values = ro.value_forward(run.value, batch) * mask
        raw_scores = run.scorer(batch).float()  # (B,)
    finished = ppo.has_stop(batch.response, mask, run.stop_ids)
    scores = ppo.apply_missing_eos_penalty(raw_scores, finished, cfg.missing_eos_penalty)
    old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
    rewards, kl = ppo.shape_rewards(old_logprobs, ref_logprobs, scores, mask, run.kl_ctl.beta)
    advantages, returns = ppo.gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
    advantages = ppo.masked_whiten(advantages, mask)
    _sync(run.device)
    return _Scored(mask, old_logprobs, old_values, raw_scores, scores, finished, kl, advantages, returns)


UPDATE_STATS = (
    "policy_loss",
    "value_loss",
    "clip_frac",
    "value_clip_frac",
    "approx_kl",
    "entropy",
    "ptx_loss",
)


def _update(
    cfg: PPOConfig,
    run: _Run,
    batch: Rollout,
    s: _Scored,
    it: int,
    ptx: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, list[float]]:
    """Phase 3: clipped PPO on policy and value over minibatches, plus γ·∇ LM loss (PPO-ptx)."""
    acc, device = run.acc, run.device
    stats: dict[str, list[float]] = {k: [] for k in UPDATE_STATS}
    order_gen = _seeded(cfg.seed, it, 99, acc.process_index)
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(run.per_process, generator=order_gen).tolist()
        for start in range(0, run.per_process, run.mini):
            idx = torch.tensor(order[start : start + run.mini], device=device)
            m = s.mask[idx]
            mb = Rollout(
                query=batch.query[idx],
                query_mask=batch.query_mask[idx],
                response=batch.response[idx],
                response_mask=m,
            )
            with acc.autocast():
                new_logprobs, logits = ro.policy_forward(run.policy, mb, cfg.temperature)
                pl = ppo.policy_loss(new_logprobs, s.old_logprobs[idx], s.advantages[idx], m, cfg.clip_ratio)
                new_values = ro.value_forward(run.value, mb)
                vl, vclip = ppo.value_loss(new_values, s.old_values[idx], s.returns[idx], m, cfg.clip_value)
            run.opt_p.zero_grad(set_to_none=True)
            run.opt_v.zero_grad(set_to_none=True)
            acc.backward(pl.loss + vl)  # separate networks: each gets only its own loss's gradient
            if ptx is not None:
                # PPO-ptx: γ·∇(LM loss) lands in the same gradient buffers before the step.
                rows = torch.randint(0, ptx[0].shape[0], (cfg.ptx_batch_size,), generator=order_gen)
                ids, pmask = ptx[0][rows].to(device), ptx[1][rows].to(device)
                keep = pmask.sum(0) > 0  # drop columns that are padding in every row
                with acc.autocast():
                    lm = _lm_loss(run.policy, ids[:, keep], pmask[:, keep])
                acc.backward(cfg.ptx_coef * lm)
                stats["ptx_loss"].append(float(lm.detach()))
            acc.clip_grad_norm_(run.policy.parameters(), cfg.max_grad_norm)
            acc.clip_grad_norm_(run.value.parameters(), cfg.max_grad_norm)
            run.opt_p.step()
            run.opt_v.step()
            with torch.no_grad():
                ent = ppo.masked_mean(ppo.entropy_from_logits(logits, cfg.temperature), m)
            losses = (
                pl.loss,
                vl,
                pl.clip_frac,
                vclip,
                pl.approx_kl,
                ent,
            )  # UPDATE_STATS' order, less ptx_loss
            for name, v in zip(UPDATE_STATS[:-1], losses, strict=True):
                stats[name].append(float(v.detach()))
    _sync(device)
    return stats


def _report(
    cfg: PPOConfig,
    run: _Run,
    batch: Rollout,
    s: _Scored,
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
            reporter.samples(done, _sample_rows(run, batch, s.scores, cfg.samples_shown, done))
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.iterations:
            _save_checkpoint(ckpt, run, done, cfg)
        # The cancel point of a job: after the checkpoint, so a resumed run loses no iteration.
        reporter.progress(
            done / cfg.iterations,
            f"iteration {done}/{cfg.iterations}: reward {mean_reward:.3f}, KL {mean_kl:.3f}",
        )


def _save_final(cfg: PPOConfig, run: _Run, work_dir: Path, output_dir: Path) -> None:
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample_rows(run: _Run, batch: Rollout, scores: torch.Tensor, n: int, step: int) -> list[dict[str, Any]]:
    """The first n episodes as people read them: the conversation as text, the reply as stored."""
    replies = ro.reply_texts(run.tokenizer, batch, run.stop_ids)
    return [
        {"step": step, "prompt": as_text(conv), "response": reply, "score": round(float(scores[b]), 4)}
        for b, (conv, reply) in enumerate(zip(batch.convs[:n], replies, strict=False))
    ]


def _save_checkpoint(ckpt: Path, run: _Run, iteration: int, cfg: PPOConfig) -> None:
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
