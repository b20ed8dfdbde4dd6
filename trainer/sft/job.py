"""The `train_sft` job: demonstrations from the database → SFT → a new policy version, not yet active.

params: the export filters with `ranklab export sft`'s meaning (sets, labelers, since, until,
split_seed, split_fractions: see app.exports.filters.filters_from_params), base_model (a policy
version id, a hub id or a folder; default: the active policy), and any SFTConfig field (lr,
epochs, batch_size, max_length, ...). The data is the `sft` export of those filters
(trainer.sft.data.load_demos): the policy trains on its `train` split, validates on its
`validation` split, and the job's result and the new version cite the export's manifest.

The policy lands in <artifacts>/policy/sft-job-<id>; checkpoints in
<artifacts>/checkpoints/sft-job-<id>, which a reclaimed job resumes from. A cancelled run deletes
both and registers nothing. When a reward model is active, each epoch's policy is scored on the
validation prompts and the best one is kept (trainer.sft.choose).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from app.config import get_settings
from app.exports.filters import FILTER_PARAMS
from app.runs import models_service, policies
from app.runs.models import JobMetric, ModelKind, ModelVersion
from app.runs.params import TRAIN_SFT
from trainer.jobs import Trained, save_policy, train_once, training_data
from trainer.sft.config import SFTConfig
from trainer.sft.data import load_demos

OWN_KEYS = set(FILTER_PARAMS) | {p.name for p in TRAIN_SFT.role("data")}


def paths_for(job_id: int, artifacts: Path | None = None) -> tuple[Path, Path]:
    """(policy folder, checkpoint folder) of a train_sft job."""
    root = Path(artifacts or get_settings().artifacts_dir).resolve()
    return root / "policy" / f"sft-job-{job_id}", root / "checkpoints" / f"sft-job-{job_id}"


def config_from_params(params: dict[str, Any], base_model: str) -> SFTConfig:
    values = SFTConfig.known_params(params, job="train_sft", own=OWN_KEYS)
    values = {k: v for k, v in values.items() if v != ""}  # a form's empty field: the default
    return SFTConfig.from_dict({**values, "base_model": base_model})


def resolve_base(session: Any, requested: Any) -> tuple[str, ModelVersion | None]:
    """(files to fine-tune, the parent version): a policy version id, a hub id or folder (no
    parent), or the active policy (registering the base one if none is)."""
    from trainer.models import policy_files

    settings = get_settings()
    if requested not in (None, ""):
        text = str(requested).strip()
        if not text.isdigit():
            return text, None
        version = policies.get_policy(session=session, version_id=int(text))
        if version is None:
            raise ValueError(f"base_model: no policy version {text}")
    else:
        version = policies.default_policy(session=session, settings=settings)
    return policy_files(version, settings), version


def checkpoint_step(work_dir: Path) -> int:
    from trainer.sft.train import CHECKPOINT

    state = work_dir / CHECKPOINT / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else 0


def run_job(ctx: Any) -> dict[str, Any]:
    from trainer.sft.train import train

    params = dict(ctx.params)
    ctx.progress(0.0, "reading demonstrations")
    with ctx.session() as s:
        base_path, parent = resolve_base(s, params.get("base_model"))
        parent_id = parent.id if parent else None
        parent_demo = bool(parent and (parent.is_demo or (parent.config or {}).get("parent_is_demo")))
        reward = models_service.active(session=s, kind=ModelKind.reward)
        reward_path = str(reward.path or reward.source) if reward is not None else None
        reward_id = reward.id if reward is not None else None
    cfg = config_from_params(params, base_path)
    demos, manifest = training_data(ctx, load_demos, "demonstrations that count for training")
    c = manifest["counts"]
    ctx.log(
        f"{c['rows']} demonstrations ({c['rows_by_split']}) of {c['prompts']} prompts "
        f"(sha256 {manifest['sha256'][:12]}…, as `ranklab export sft`); base {base_path}"
        + (f" (policy {parent_id})" if parent_id else "")
    )

    out_dir, work_dir = paths_for(ctx.job_id)
    if ctx.attempt > 1:
        # A reclaimed job: curves restart where the checkpoint does, without doubled points.
        resume_at = checkpoint_step(work_dir)
        with ctx.session() as s:
            s.execute(delete(JobMetric).where(JobMetric.job_id == ctx.job_id, JobMetric.step > resume_at))
    run = partial(train, cfg, demos, manifest=manifest, reward_path=reward_path)
    metrics = train_once(ctx, out_dir, work_dir, run, what="policy")

    config = {"trained_by": "train_sft", "data": manifest["filters"], "manifest": manifest}
    config |= {"reward_version_id": reward_id, "parent_is_demo": parent_demo}
    said = f"validation loss {metrics.get('val_loss_first')} → {metrics.get('val_loss_last')}"
    made = Trained("sft", cfg, out_dir, metrics, config)
    mv_id = save_policy(ctx, made, parent_id=parent_id, summary=said)
    return {
        "model_version_id": mv_id,
        "policy_version": mv_id,
        "path": str(out_dir),
        "parent_id": parent_id,
        "val_loss_first": metrics.get("val_loss_first"),
        "val_loss_last": metrics.get("val_loss_last"),
        "kept_epoch": metrics.get("kept_epoch"),
        "kept_because": metrics.get("kept_because"),
        "metrics": metrics,
        "data": manifest,  # the export's manifest of the training data: the run page shows it
        "from_demo": parent_demo,
    }
