"""What the trainer's configs share: a dataclass whose fields a job's parameter definition
(app/runs/params) describes, made from a dict and checked against it; and the launchers'
`--config FILE` and `--set FIELD=VALUE` read into such a dict."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

from app.runs.params.spec import JobSpec

C = TypeVar("C", bound="SpecConfig")


class SpecConfig:
    """Base of PPOConfig, RewardConfig and SFTConfig (dataclasses): SPEC defines their fields but
    INTERNAL (config fields the definition does not offer to users: none today).

    A config annotates its fields without defaults, itself or in a shared base (LoopConfig):
    each field takes its default from SPEC, and the fields stand in SPEC's order (the order of
    the saved config's JSON)."""

    SPEC: ClassVar[JobSpec]
    INTERNAL: ClassVar[frozenset[str]] = frozenset()
    UNKNOWN: ClassVar[str]  # what an unknown field is called in the error ("PPO setting")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "SPEC" not in cls.__dict__:
            return  # a shared base: its fields are declared here, defaulted in each config
        declared: dict[str, Any] = {}
        for base in reversed(cls.__mro__):
            if issubclass(base, SpecConfig) and base is not SpecConfig:
                declared.update(base.__dict__.get("__annotations__", {}))
        order = [p.name for p in cls.SPEC.fields]
        names = sorted(declared, key=lambda n: order.index(n) if n in order else len(order))
        cls.__annotations__ = {n: declared[n] for n in names}
        defaults = cls.SPEC.defaults
        for name in names:
            if name in defaults and name not in cls.__dict__:
                setattr(cls, name, defaults[name])

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


class LoopConfig(SpecConfig):
    """The fields the reward-model and SFT loops share (trainer/loop.py reads them); each
    config's SPEC gives their defaults."""

    base_model: str
    lr: float
    min_lr_ratio: float
    epochs: int
    batch_size: int
    grad_accum: int
    max_length: int
    weight_decay: float
    max_grad_norm: float
    eval_every: int
    checkpoint_every: int
    bf16: bool
    seed: int


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


def add_config_options(parser: Any, name: str) -> None:
    """A launcher's --config FILE and repeated --set FIELD=VALUE for the config class `name`."""
    parser.add_argument("--config", type=Path, help=f"JSON file of {name} fields")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"one {name} field (JSON value, else text)",
    )


def config_from_args(cls: type[C], args: Any) -> C:
    """The config a launcher's --config and --set options give (add_config_options)."""
    return cls.from_dict(launch_values(args.config, args.overrides))


def is_main_process() -> bool:
    """Under `accelerate launch`, whether this is the process that prints (rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group() -> None:
    """Under `accelerate launch`, the end of a launcher: the process group is taken down before
    the process exits. A rank that exits with gloo's threads still running aborts ("terminate
    called without an active exception", SIGABRT), and the launch fails though it trained."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
