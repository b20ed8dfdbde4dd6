"""What the trainer's configs share: a dataclass whose fields a job's parameter definition
(app/runs/params) describes, made from a dict and checked against it; and the launchers'
`--config FILE` and `--set FIELD=VALUE` read into such a dict."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Self, cast

from app.runs.params.spec import JobSpec


class SpecConfig:
    """Base of PPOConfig and RewardConfig (dataclasses): SPEC defines their fields but INTERNAL."""

    SPEC: ClassVar[JobSpec]
    INTERNAL: ClassVar[frozenset[str]] = frozenset()
    UNKNOWN: ClassVar[str]  # what an unknown field is called in the error ("PPO setting")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cast(Any, cls))}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.UNKNOWN}(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        cfg = cast(Self, cast(Any, cls)(**values))
        cfg.validate()
        return cfg

    @classmethod
    def known_params(cls, params: dict[str, Any], *, job: str, own: Iterable[str]) -> dict[str, Any]:
        """The job's parameters that are config fields, those set (not None); a parameter neither
        a field nor one of the job's `own` (its data filters, ...) is refused, naming the job."""
        known = {f.name for f in fields(cast(Any, cls))}
        unknown = sorted(set(params) - known - set(own))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} for {job} "
                f"(known: {', '.join(sorted(known | set(own)))})"
            )
        return {k: v for k, v in params.items() if k in known and v is not None}

    def validate(self) -> None:
        """Raises ValueError (app.runs.params.ParamsError) naming each field out of its range."""
        self.SPEC.validate(
            {f.name: getattr(self, f.name) for f in fields(cast(Any, self)) if f.name not in self.INTERNAL}
        )


def launch_values(config_file: str | Path | None, sets: Iterable[str]) -> dict[str, Any]:
    """A launcher's config fields: the JSON file's, then each FIELD=VALUE (a JSON value, else the text)."""
    values: dict[str, Any] = json.loads(Path(config_file).read_text()) if config_file else {}
    for item in sets:
        name, _, raw = item.partition("=")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values
