"""Which epoch's policy SFT keeps, as InstructGPT chose (§3.5, App. C.1): with a reward model,
the epoch whose samples on the validation prompts score the highest mean reward; without one, the
epoch with the lowest validation loss.

After each epoch `EpochChoice.after_epoch` records the epoch's validation loss and (with a reward
model) its mean reward; when the epoch is the best so far its weights are copied to
<work_dir>/best, so a resumed run still knows them. At the end `restore` puts the best epoch's
weights back into the model before it is saved, and says which epoch was kept and why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer import render
from trainer.sft.data import Demo

BEST = "best"
HISTORY = "epochs.json"
MAX_PROMPTS = 32  # validation prompts sampled per epoch (the paper's validation set is larger)
MAX_NEW_TOKENS = 64


@torch.no_grad()
def mean_reward(
    model: torch.nn.Module,
    tokenizer: Any,
    reward: tuple[torch.nn.Module, Any],
    demos: Sequence[Demo],
    *,
    device: torch.device,
    max_length: int,
    seed: int,
) -> float:
    """The reward model's mean (normalised) score of the policy's samples on these prompts."""
    from trainer.ppo.rollout import generate, query_batch, reply_texts
    from trainer.reward.model import score_replies

    convs = [d.messages for d in demos[:MAX_PROMPTS]]
    was_training = model.training
    model.eval()
    stops = render.stop_token_ids(tokenizer)
    ids, mask = query_batch(tokenizer, convs, max(8, max_length - MAX_NEW_TOKENS), device)
    rollout = generate(
        model,
        ids,
        mask,
        max_new_tokens=MAX_NEW_TOKENS,
        stop_ids=stops,
        pad_id=render.pad_id(tokenizer),
        generator=torch.Generator(device=device).manual_seed(seed),
        convs=convs,
    )
    replies = reply_texts(tokenizer, rollout, stops)
    model.train(was_training)
    scores = score_replies(reward[0], reward[1], convs, replies, max_length=max_length, device=device)
    return float(sum(scores) / len(scores))


class EpochChoice:
    def __init__(
        self,
        work_dir: Path,
        *,
        validation: Sequence[Demo],
        reward_path: str | None,
        max_length: int,
        seed: int,
    ) -> None:
        self.work_dir, self.validation, self.reward_path = work_dir, list(validation), reward_path
        self.max_length, self.seed = max_length, seed
        self._reward: tuple[torch.nn.Module, Any] | None = None
        path = work_dir / HISTORY
        self.history: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []

    @property
    def by_reward(self) -> bool:
        return bool(self.reward_path and self.validation)

    def _key(self, row: dict[str, Any]) -> float:
        if self.by_reward:
            return float(row["mean_reward"])
        loss = row.get("val_loss")
        return -float(loss) if loss is not None else -float(row["epoch"])  # no validation: the last

    def best(self) -> dict[str, Any] | None:
        return max(self.history, key=self._key) if self.history else None

    def after_epoch(
        self,
        epoch: int,
        model: torch.nn.Module,
        tokenizer: Any,
        val_loss: float | None,
        device: torch.device,
        *,
        keep: bool = True,
    ) -> dict[str, Any]:
        """Score the epoch just ended and, if it is the best so far, copy its weights aside
        (`keep`: not for the last epoch, whose weights are the model's own); its record."""
        from safetensors.torch import save_model

        row: dict[str, Any] = {"epoch": epoch, "val_loss": val_loss}
        if self.by_reward:
            if self._reward is None:
                from trainer.reward.model import load_reward_model

                assert self.reward_path is not None
                rm, rtok = load_reward_model(self.reward_path)
                self._reward = (rm.to(device).eval(), rtok)
            row["mean_reward"] = mean_reward(
                model,
                tokenizer,
                self._reward,
                self.validation,
                device=device,
                max_length=self.max_length,
                seed=self.seed,
            )
        self.history = [r for r in self.history if r["epoch"] != epoch] + [row]
        if keep and self.best() is row:
            tmp = self.work_dir / f"{BEST}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model(model, str(tmp / "model.safetensors"))
            (tmp / "epoch.json").write_text(json.dumps(row))
            shutil.rmtree(self.work_dir / BEST, ignore_errors=True)
            tmp.rename(self.work_dir / BEST)
        (self.work_dir / HISTORY).write_text(json.dumps(self.history))
        return row

    def restore(self, model: torch.nn.Module) -> dict[str, Any]:
        """Load the kept epoch's weights into `model` (when it is not the last); the summary
        for the metrics: every epoch's figures, which was kept and why."""
        from safetensors.torch import load_model

        best = self.best()
        if best is None:
            return {}
        last = max(r["epoch"] for r in self.history)
        if best["epoch"] != last:
            load_model(model, str(self.work_dir / BEST / "model.safetensors"))
        if self.by_reward:
            why = f"the highest mean reward on {min(len(self.validation), MAX_PROMPTS)} validation prompts"
        elif best.get("val_loss") is not None:
            why = "the lowest validation loss (no reward model is active)"
        else:
            why = "the last epoch (no validation data and no reward model)"
        return {
            "epochs": sorted(self.history, key=lambda r: r["epoch"]),
            "kept_epoch": best["epoch"],
            "kept_because": why,
            "kept_mean_reward": best.get("mean_reward"),
            "kept_val_loss": best.get("val_loss"),
        }
