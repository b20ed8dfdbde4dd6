"""PPO's setup: the models (policy, frozen reference, value network from the reward model),
the scorer, the optimizers and the KL controller, resumed from a checkpoint when one is there;
and `Run`, what every phase of one run shares."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from trainer import render
from trainer.ppo import losses as ppo
from trainer.ppo import rollout as ro
from trainer.ppo.config import PPOConfig
from trainer.ppo.rollout import RewardModelScorer, Rollout, read_normalization


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


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@dataclass
class Run:
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


def setup(
    cfg: PPOConfig,
    policy_path: Path,
    reward_path: Path,
    ckpt: Path,
    scorer: Scorer | None,
    reporter: Reporter,
) -> Run:
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
    value = value_network(
        ckpt / "value" if resuming else reward_path, policy_path, reward_path, policy, pad_id
    )
    for net in (policy, reference, value):
        disable_dropout(net)
        net.eval()  # dropout off everywhere; eval() does not stop gradients
    reference.requires_grad_(False)
    reference.to(acc.device)
    if scorer is None:
        frozen_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        scorer = reward_scorer(reward_path, acc.device, frozen_dtype, tokenizer, reporter)

    opt_p = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
    opt_v = torch.optim.AdamW(value.parameters(), lr=cfg.value_learning_rate, eps=1e-5, weight_decay=0.0)
    policy, value, opt_p, opt_v = acc.prepare(policy, value, opt_p, opt_v)
    run = Run(
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
        resume(run, ckpt, reporter)
    return run


def reward_scorer(
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


def resume(run: Run, ckpt: Path, reporter: Reporter) -> None:
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    run.opt_p.load_state_dict(state["opt_policy"])
    run.opt_v.load_state_dict(state["opt_value"])
    run.kl_ctl.load_state_dict(state["kl"])
    run.start_it, run.history = int(state["iteration"]), state["history"]
    reporter.log(f"resumed from the checkpoint of iteration {run.start_it}")


def value_network(start: Path, policy_path: Path, reward_path: Path, policy: Any, pad_id: int) -> Any:
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


def prompt_room(cfg: PPOConfig, run: Run) -> int:
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
