"""The policy registry: `model_version` rows of kind policy. Pure database code, no torch.

The base policy is the one `RANKLAB_POLICY_MODEL` names (a hub id or a folder), registered the
first time anything asks for a policy. With no policy configured, the base is the demo model
that trainer/models/demo.py builds in the artifacts folder; its row says `is_demo` so every
page that shows its text can say so. At most one policy is active (a partial unique index).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.runs import models_service
from app.runs.models import ModelKind, ModelVersion

DEMO_SOURCE = "demo"
DEMO_NAME = "demo policy (small GPT-2-style model built locally)"
DEMO_DIRNAME = "demo-policy"
DEMO_MARKER = "ranklab-demo.json"  # written last by the builder: the folder is complete


def demo_is_built(settings: Settings) -> bool:
    return (demo_path(settings) / DEMO_MARKER).is_file()


def demo_path(settings: Settings) -> Path:
    return Path(settings.artifacts_dir) / DEMO_DIRNAME


def active_policy(*, session: Session) -> ModelVersion | None:
    return models_service.active(session=session, kind=ModelKind.policy)


def list_policies(*, session: Session) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.kind == ModelKind.policy).order_by(ModelVersion.id)
        )
    )


def get_policy(*, session: Session, version_id: int) -> ModelVersion | None:
    mv = session.get(ModelVersion, version_id)
    return mv if mv is not None and mv.kind == ModelKind.policy else None


def ensure_demo_policy(*, session: Session, settings: Settings) -> ModelVersion:
    """The demo policy's row (its files are built by the worker or `ranklab demo` on first use)."""
    mv = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.kind == ModelKind.policy,
            ModelVersion.source == DEMO_SOURCE,
            ModelVersion.parent_id.is_(None),
            ModelVersion.job_id.is_(None),
        )
        .order_by(ModelVersion.id)
    )
    if mv is None:
        mv = ModelVersion(
            kind=ModelKind.policy,
            name=DEMO_NAME,
            source=DEMO_SOURCE,
            path=str(demo_path(settings)),
            is_demo=True,
            config={"origin": "built locally by trainer/models/demo.py"},
        )
        session.add(mv)
        session.flush()
    return mv


def ensure_base_policy(*, session: Session, settings: Settings) -> ModelVersion:
    """Register the configured base policy (or the demo one) and make sure one policy is active.

    A configured model replaces an active demo model (the demo is only a stand-in), but never a
    policy that training produced or that someone activated on purpose.
    """
    if settings.policy_model:
        source = settings.policy_model
        base = session.scalar(
            select(ModelVersion)
            .where(
                ModelVersion.kind == ModelKind.policy,
                ModelVersion.source == source,
                ModelVersion.parent_id.is_(None),
                ModelVersion.job_id.is_(None),
            )
            .order_by(ModelVersion.id)
        )
        if base is None:
            base = ModelVersion(
                kind=ModelKind.policy,
                name=_short_name(source),
                source=source,
                path=source,
                is_demo=False,
                config={"origin": "RANKLAB_POLICY_MODEL"},
            )
            session.add(base)
            session.flush()
    else:
        base = ensure_demo_policy(session=session, settings=settings)
    current = active_policy(session=session)
    if current is None or (current.is_demo and not base.is_demo):
        models_service.activate(session=session, model=base)
    return base


def default_policy(*, session: Session, settings: Settings) -> ModelVersion:
    """What samples when nobody chose: the active policy, registering the base one if needed."""
    ensure_base_policy(session=session, settings=settings)
    current = active_policy(session=session)
    assert current is not None
    return current


def _short_name(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1] or source
    return name[:200]
