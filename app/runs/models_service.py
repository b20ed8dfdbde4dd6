"""The model registry: list policy and reward model versions, activate one, promote a policy.

At most one model of each kind is active (a partial unique index enforces it in the database).
Switching is one transaction: lock the kind's rows, clear the old flag, flush, set the new one;
the flush between matters, because the index is checked per statement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.errors import Invalid, found
from app.runs.models import ModelKind, ModelVersion

# Names a trainer may use for the figure the models page shows first, most telling first.
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    ModelKind.reward: ("val_accuracy", "val/accuracy", "accuracy", "pairwise_accuracy", "eval/accuracy"),
    ModelKind.policy: ("mean_reward", "reward", "reward/mean", "ppo/mean_reward", "final_reward"),
}


class ModelError(Invalid):
    """A registry request that cannot be done; the message says why."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(field, message)


def list_models(*, session: Session, kind: str | None = None) -> list[ModelVersion]:
    """Newest first within each kind; the active one is marked, not moved."""
    if kind is not None and kind not in ModelKind.__members__:
        raise ModelError(f"unknown model kind '{kind}' (known: {', '.join(ModelKind)})", field="kind")
    query = select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.id.desc())
    if kind is not None:
        query = query.where(ModelVersion.kind == kind)
    return list(session.scalars(query))


def get_model(*, session: Session, model_id: int) -> ModelVersion:
    return found(session.get(ModelVersion, model_id), f"No model version with id {model_id}.")


def active(*, session: Session, kind: str) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.is_active.is_(True))
    )


def activate(*, session: Session, model: ModelVersion) -> ModelVersion:
    """Make this the one active model of its kind. Idempotent."""
    # Lock every row of the kind so two concurrent switches queue up rather than collide.
    session.execute(
        select(ModelVersion.id)
        .where(ModelVersion.kind == model.kind)
        .order_by(ModelVersion.id)
        .with_for_update()  # one lock order: no deadlock between two
    ).all()
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.kind == model.kind, ModelVersion.is_active.is_(True), ModelVersion.id != model.id)
        .values(is_active=False)
        .execution_options(synchronize_session="fetch")
    )
    session.flush()
    model.is_active = True
    session.flush()
    return model


def activate_reward(*, session: Session, model: ModelVersion) -> ModelVersion:
    if model.kind != ModelKind.reward:
        raise ModelError(f"model {model.id} is a {model.kind} model, not a reward model")
    return activate(session=session, model=model)


# The first reward model becomes active by itself only when it is measurably better than chance:
# above 50% on at least this many validation pairs. Otherwise a person decides on /models.
MIN_VAL_PAIRS_TO_ACTIVATE = 30


def why_not_active_by_itself(metrics: dict[str, Any]) -> str | None:
    """None when a first reward model with these validation metrics may be made active by
    itself; else the reason /models shows beside it."""
    accuracy, pairs = metrics.get("val_accuracy"), metrics.get("val_pairs") or 0
    if not isinstance(accuracy, int | float) or pairs < MIN_VAL_PAIRS_TO_ACTIVATE:
        return (
            f"not made active by itself: {pairs} validation pairs, fewer than the "
            f"{MIN_VAL_PAIRS_TO_ACTIVATE} needed to tell it from chance; label more, "
            "or make it active by hand"
        )
    if accuracy <= 0.5:
        return (
            f"not made active by itself: validation accuracy {accuracy:.1%} is no better than chance "
            "(50%); check the labels or train longer, or make it active by hand"
        )
    return None


def promote_policy(*, session: Session, model: ModelVersion) -> ModelVersion:
    """The policy that samples from now on (new prompt sets, the next PPO run's start)."""
    if model.kind != ModelKind.policy:
        raise ModelError(
            f"model {model.id} is a {model.kind} model, not a policy; use activate for reward models"
        )
    return activate(session=session, model=model)


def headline(model: ModelVersion) -> tuple[str, Any] | None:
    """(metric name, value) to show beside the model, or None when it has none of them."""
    metrics = model.metrics or {}
    for name in HEADLINE_METRICS.get(model.kind, ()):
        if name in metrics:
            return name, metrics[name]
    return None


def names(*, session: Session, ids: set[int]) -> dict[int, str]:
    """id -> name for showing parents."""
    if not ids:
        return {}
    return dict(
        session.execute(select(ModelVersion.id, ModelVersion.name).where(ModelVersion.id.in_(ids))).all()
    )
