"""Each job kind's parameters, defined once: name, type, default, range, help, and whether the field
says what a run trains on ("data": filters, models, files) or how it trains ("hyper").

Everything else is made from these definitions: the dashboard forms (templates/runs/_params.html
and `from_form`), the CLI options (`click_options`), the JSON API's schema and validation
(`JobSpec.model`), and the trainer's configs (trainer/reward/config.py, trainer/ppo/config.py and
trainer/sft/config.py take their defaults and ranges from here). Defaults: InstructGPT's recipe at
a size one machine runs in minutes (docs/reward.md, docs/ppo.md). A job's params hold what its
user set; the trainer fills the rest from these defaults. No torch here: the web process imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.runs.params.ppo import ROUND, ROUND_PPO_KNOBS, TRAIN_PPO
from app.runs.params.reward import TRAIN_REWARD
from app.runs.params.sft import TRAIN_SFT
from app.runs.params.spec import (
    Check,
    JobSpec,
    Param,
    ParamsError,
    click_options,
    describe_value,
    form_values,
    from_cli,
    from_form,
)

__all__ = [
    "ROUND",
    "ROUND_PPO_KNOBS",
    "SPECS",
    "TRAIN_PPO",
    "TRAIN_REWARD",
    "TRAIN_SFT",
    "Check",
    "JobSpec",
    "Param",
    "ParamsError",
    "click_options",
    "describe_value",
    "form_values",
    "from_cli",
    "from_form",
    "label_rows",
]

SPECS: dict[str, JobSpec] = {s.kind: s for s in (TRAIN_REWARD, TRAIN_PPO, TRAIN_SFT)}


def label_rows(kind: str, values: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(label, value, tooltip) rows of a job's params or result, for the run page's tables. A key
    the definition of `kind` knows shows its label and help; a nested mapping (a result's metrics,
    a data manifest) becomes rows labelled "metrics › val accuracy"."""
    spec = SPECS.get(kind)
    rows: list[tuple[str, str, str]] = []
    for key, value in (values or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += label_rows(kind, value, prefix=f"{name}.")
        elif not prefix and spec is not None and key in spec:
            p = spec[key]
            rows.append((p.label, describe_value(value), f"{p.name}: {p.help}"))
        else:
            rows.append((name.replace("_", " ").replace(".", " › "), describe_value(value), name))
    return rows
