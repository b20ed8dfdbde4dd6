"""The machinery of job parameter definitions: a Param, a JobSpec, and what is made from them
(the API's pydantic model, form parsing, click options). The definitions: reward.py, ppo.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Literal, TypeVar

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

Role = Literal["data", "hyper"]
F = TypeVar("F", bound=Callable[..., Any])
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # int, float, str, bool, list (of str) or datetime
    default: Any
    help: str
    """One sentence; with the paper's value where it has one."""
    label: str
    role: Role = "hyper"
    low: float | None = None
    high: float | None = None
    optional: bool = False  # None is a value ("not set": e.g. a fixed β without kl_target)
    choices: tuple[str, ...] = ()
    advanced: bool = False  # folded away on the form
    cli: tuple[str, ...] = ()  # option names besides --the-name (e.g. "--set" for sets)
    metavar: str | None = None
    form: bool = True
    api: bool = True

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def widget(self) -> str:
        """How the form asks for it (templates/runs/_params.html)."""
        if self.name == "sets":
            return "sets"
        if self.name.endswith("_file"):
            return "file"
        if self.choices or self.type is bool:
            return "select"
        return {int: "number", datetime: "datetime"}.get(self.type, "text")

    @property
    def options(self) -> tuple[tuple[str, str], ...]:
        """(value, label) of a select: the choices, or yes/no."""
        if self.type is bool:
            return (("true", "yes"), ("false", "no"))
        return tuple((c, c) for c in self.choices)

    def shown(self, value: Any) -> str:
        """A value as its form box shows it."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def describe(self) -> str:
        """What a valid value is, for error messages."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type in (int, float) and self.low is not None and self.high is not None:
            what = "a whole number" if self.type is int else "a number"
            return f"{what} from {self.low:g} to {self.high:g}"
        return {bool: "true or false", datetime: "a date and time (2024-05-01T12:00)"}.get(self.type, "text")

    def annotation(self) -> Any:
        kind: Any = list[str] if self.type is list else self.type
        return kind | None if self.optional else kind


@dataclass(frozen=True)
class Check:
    """A rule over several fields: `message(values)` is None when they are fine."""

    field: str
    message: Callable[[Mapping[str, Any]], str | None]


class ParamsError(ValueError):
    """Invalid parameters: `errors` holds one "field: what is wrong" line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class JobSpec:
    kind: str
    title: str
    fields: tuple[Param, ...]
    checks: tuple[Check, ...] = ()

    def __getitem__(self, name: str) -> Param:
        for p in self.fields:
            if p.name == name:
                return p
        raise KeyError(f"{self.kind} has no parameter {name!r}")

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.fields)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: (list(p.default) if p.type is list else p.default) for p in self.fields}

    def role(self, role: Role) -> list[Param]:
        return [p for p in self.fields if p.role == role]

    @cached_property
    def model(self) -> type[BaseModel]:
        """The pydantic model of the JSON API: every field with its range and help, no others."""
        name = "".join(part.title() for part in self.kind.split("_")) + "Params"
        checks = self.checks

        def run_checks(model: BaseModel) -> BaseModel:
            for check in checks:
                message = check.message(model.model_dump())
                if message:
                    raise ValueError(f"{check.field}: {message}")
            return model

        definitions: dict[str, Any] = {
            p.name: (
                p.annotation(),
                Field(
                    default=list(p.default) if p.type is list else p.default,
                    description=p.help,
                    title=p.label,
                    ge=p.low,
                    le=p.high,
                    json_schema_extra={"enum": list(p.choices)} if p.choices else None,
                ),
            )
            for p in self.fields
            if p.api
        }
        validators: dict[str, Any] = {"checks": model_validator(mode="after")(run_checks)}
        return create_model(
            name,
            __config__=ConfigDict(extra="forbid", title=f"{self.title} parameters"),
            __validators__=validators,
            **definitions,
        )

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values, checked and converted ("3e-5" → 3e-05), only those given. Raises ParamsError."""
        errors = [f"{k}: no such parameter of {self.kind}" for k in values if k not in self]
        if errors:
            raise ParamsError(errors)
        for p in self.fields:
            if p.choices and values.get(p.name) not in (None, *p.choices):
                errors.append(f"{p.name}: {p.describe()}, not {values[p.name]!r}")
        if errors:
            raise ParamsError(errors)
        try:
            checked = self.model.model_validate({k: v for k, v in values.items() if self[k].api})
        except ValidationError as exc:
            for e in exc.errors():
                if e["loc"]:
                    name = str(e["loc"][0])
                    p = self[name]
                    errors.append(f"{name}: {p.describe()}, not {values.get(name)!r}")
                else:
                    errors.append(str(e["msg"]).removeprefix("Value error, "))
            raise ParamsError(list(dict.fromkeys(errors))) from None
        out = checked.model_dump(mode="json", exclude_unset=True)
        return out | {k: v for k, v in values.items() if not self[k].api}


def from_form(spec: JobSpec, form: Any) -> tuple[dict[str, Any], list[str]]:
    """A submitted form (starlette FormData) → (params, errors). An empty box means "the default"."""
    values: dict[str, Any] = {}
    for p in spec.fields:
        if not p.form or p.widget == "file":
            continue
        if p.type is list:
            values[p.name] = [str(v) for v in form.getlist(p.name) if str(v).strip()]
        else:
            raw = str(form.get(p.name) or "").strip()
            if raw:
                values[p.name] = raw
    try:
        return spec.validate(values), []
    except ParamsError as exc:
        return values, exc.errors


def form_values(spec: JobSpec, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the form's boxes show: the defaults, overridden by what was typed (on an error)."""
    shown = {p.name: ("" if p.default is None else p.default) for p in spec.fields}
    return shown | dict(given or {})


def click_options(spec: JobSpec, *, skip: Sequence[str] = ()) -> Callable[[F], F]:
    """Adds an option for every field of `spec` (but `skip`). Every option defaults to None
    (or to nothing, for lists), so a job's params hold only what was typed."""

    def decorate(command: F) -> F:
        for p in reversed(spec.fields):
            if p.name in skip:
                continue
            kwargs: dict[str, Any] = {
                "help": _cli_help(p),
                "metavar": p.metavar or ("DATE" if p.type is datetime else None),
            }
            if p.type is bool:
                decls: tuple[str, ...] = (f"{p.option}/--no-{p.option[2:]}",)
                kwargs = {"help": _cli_help(p), "default": None}
            elif p.type is list:
                decls = p.cli or (p.option,)
                kwargs |= {"multiple": True}
            else:
                decls = (*p.cli, p.option)
                kwargs |= {"type": _click_type(p)}
            command = click.option(*decls, p.name, **kwargs)(command)
        return command

    return decorate


def from_cli(spec: JobSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The options a command was given → checked params; a bad one is a click usage error."""
    given = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in values.items()
        if k in spec and v is not None and v != ()
    }
    try:
        return spec.validate(given)
    except ParamsError as exc:
        raise click.UsageError("; ".join(exc.errors)) from exc


def _cli_help(p: Param) -> str:
    if p.type is bool:
        return f"{p.help} Default: {'on' if p.default else 'off'}."
    if p.default in (None, "", ()):
        return p.help
    return (
        f"{p.help} Default: {p.default:g}."
        if isinstance(p.default, float)
        else f"{p.help} Default: {p.default}."
    )


def _click_type(p: Param) -> Any:
    if p.choices:
        return click.Choice(p.choices)
    if p.type is int:
        return click.IntRange(_int(p.low), _int(p.high))
    if p.type is float:
        return click.FloatRange(p.low, p.high)
    if p.type is datetime:
        return click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])
    return str


def _int(x: float | None) -> int | None:
    return None if x is None else int(x)


def describe_value(value: Any) -> str:
    """A param or result value as the run page shows it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(describe_value(v) for v in value) if value else "–"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if value is None or value == "":
        return "–"
    return str(value)


def sets_param(help: str) -> Param:
    """`sets`, the prompt-set filter every job kind has (its help says what none means)."""
    return Param("sets", list, (), help, "Prompt sets", role="data", cli=("--set",), metavar="NAME")
