"""The `train_reward` job: rankings from the database → a trained, registered reward model.

params: the export filters with `ranklab export`'s meaning (sets, policies, labelers, since,
until, min_labels, exclude_flagged, split_seed, split_fractions: see
app.exports.filters.filters_from_params), base_model (default: the active policy's backbone),
and any RewardConfig field (lr, epochs, batch_size, max_length, ...). The data is the `groups`
export of those filters: the model trains on its `train` split, validates on its `validation`
split, and the job's result cites the export's manifest (result["data"]). The score is normalised so the
demonstrations of its prompts (InstructGPT §3.5) score 0 on average, or, without any, so the
active policy's samples do (result["normalized_on"] says which). The model lands in
<artifacts>/reward/job-<id>; checkpoints in <artifacts>/checkpoints/reward-job-<id>, which a
reclaimed job resumes from.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from app.chat import Conversation, conversation_hash
from app.config import get_settings
from app.exports.filters import FILTER_PARAMS
from app.runs import models_service
from app.runs.models import ModelKind, ModelVersion
from trainer.jobs import Trained, register_version, train_once, training_data
from trainer.reward.data import load_groups
from trainer.reward.train import RewardConfig, train

FILTER_KEYS = set(FILTER_PARAMS)


def paths_for(job_id: int, artifacts: Path | None = None) -> tuple[Path, Path]:
    """(model folder, checkpoint folder) of a train_reward job."""
    root = Path(artifacts or get_settings().artifacts_dir)
    return root / "reward" / f"job-{job_id}", root / "checkpoints" / f"reward-job-{job_id}"


def config_from_params(params: dict[str, Any], base_model: str) -> RewardConfig:
    values = RewardConfig.known_params(params, job="train_reward", own=FILTER_KEYS)
    values = {k: v for k, v in values.items() if v != ""}  # a form's empty field: the default
    values["base_model"] = base_model
    return RewardConfig.from_dict(values)


def resolve_base_model(requested: str | None, policy: ModelVersion | None) -> tuple[str, ModelVersion | None]:
    """The backbone: what was asked for, else the active `policy`'s, else RANKLAB_POLICY_MODEL.
    The policy comes back only when its files are the backbone (it is then the model's parent)."""
    if requested:
        return requested, None
    if policy is not None and (policy.path or policy.source not in ("", "demo")):
        return str(policy.path or policy.source), policy
    if get_settings().policy_model:
        return str(get_settings().policy_model), None
    raise ValueError(
        "no base model: pass base_model (--base-model), or make a policy with saved files active"
    )


def demonstration_reference(sessions: Any, groups: list[Any]) -> list[tuple[Conversation, str]]:
    """(conversation, reply) of every demonstration that counts for training (the SFT records:
    `ranklab export sft`) whose prompt is one of the groups' (the same conversation, in any set)."""
    from trainer.sft.data import load_demos

    wanted = {conversation_hash(g.messages) for g in groups}
    demos, _ = load_demos(sessions=sessions, params={}, secret=get_settings().secret_key)
    return [(d.messages, d.reply) for d in demos if conversation_hash(d.messages) in wanted]


def run_job(ctx: Any) -> dict[str, Any]:
    params = dict(ctx.params)
    ctx.progress(0.0, "reading rankings")
    with ctx.session() as s:
        active_policy = models_service.active(session=s, kind=ModelKind.policy)
        base_model, policy = resolve_base_model(params.get("base_model"), active_policy)
        cfg = config_from_params(params, base_model)
        ref = (active_policy.id, active_policy.name) if active_policy else None
    groups, manifest = training_data(ctx, load_groups, "rankings")
    c = manifest["counts"]
    ctx.log(
        f"{c['rows']} tasks ({c['rows_by_split']}), {c['annotations']} rankings, {c['pairs']} comparisons "
        f"(sha256 {manifest['sha256'][:12]}…, as `ranklab export groups`); base model {base_model}"
    )

    # InstructGPT §3.5: the demonstrations of the prompts trained on set the score's zero (and
    # unit); without any, the reference policy's own samples; without those, every completion.
    reference = demonstration_reference(ctx.sessions, groups)
    if reference:
        normalized_on = f"{len(reference)} demonstrations of its prompts (their mean score is 0)"
    else:
        reference = [
            (g.messages, c)
            for g in groups
            for c, p in zip(g.completions, g.policies, strict=False)
            if ref and p == ref[1]
        ]
        normalized_on = f"policy {ref[0]}" if ref and reference else "every completion in the data"
    ctx.log(f"score normalised on {normalized_on}")

    out_dir, work_dir = paths_for(ctx.job_id)
    run = partial(train, cfg, groups, reference=reference or None, manifest=manifest)
    metrics = train_once(ctx, out_dir, work_dir, run, what="model")

    with ctx.session() as s:
        config = {"data": manifest["filters"], "manifest": manifest, "normalized_on": normalized_on}
        made = Trained("reward", cfg, out_dir, metrics, config)
        mv = register_version(
            s, ctx, made, kind=ModelKind.reward, source=base_model, parent_id=policy.id if policy else None
        )
        if models_service.active(session=s, kind=ModelKind.reward) is None:
            # The first good reward model is the one PPO uses until someone switches.
            reason = models_service.why_not_active_by_itself(metrics)
            if reason is None:
                mv.is_active = True
            else:
                metrics = mv.metrics = {**metrics, "not_active_because": reason}
        s.flush()
        mv_id, active = mv.id, mv.is_active
        why_inactive = (mv.metrics or {}).get("not_active_because")
    if why_inactive:
        ctx.log(why_inactive)
    ctx.log(
        f"reward model {mv_id} saved at {out_dir} (validation accuracy "
        f"{metrics.get('val_accuracy')}){'; now active' if active else ''}"
    )
    return {
        "model_version_id": mv_id,
        "path": str(out_dir),
        "active": active,
        "metrics": metrics,
        "data": manifest,  # the export's manifest of the training data: the run page shows it
        "normalized_on": normalized_on,
    }
