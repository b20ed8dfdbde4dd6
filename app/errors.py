"""Domain errors and the annotated types every route uses.

Services raise these, never HTTPException; app/main.py maps them to HTTP in one handler: JSON
under /api (404/409/413 `{"detail": "message"}`, 422 `{"detail": [{"field", "message", "file",
"line", "text"}, ...]}`, the same shape as FastAPI's own validation errors), an error page in
the browser. The request's session is rolled back when one escapes a handler (app/db.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Path
from pydantic import AfterValidator, BaseModel, StringConstraints

# Path ids are accepted in 1..2**63-1 (a 64-bit id), but the id columns are 32-bit integers
# (SQLAlchemy `Integer`): PostgreSQL refuses a larger number in the query itself (a 500), so an
# id above MAX_ROW_ID is answered "not found" without asking the database.
MAX_PATH_ID = 2**63 - 1
MAX_ROW_ID = 2**31 - 1
NUL = "\x00"


@dataclass(frozen=True)
class Problem:
    """Where and why an input was refused: a field of a form or body, or a file and line."""

    file: str | None
    line: int | None
    field: str | None
    message: str
    unit: str = "line"  # "row" for Parquet, which has no lines

    def __str__(self) -> str:
        where = [self.file] if self.file else []
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'" if self.file else self.field)
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def as_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in ("file", "line", "field", "message")}, "text": str(self)}


class ProblemOut(BaseModel):
    field: str | None
    message: str
    file: str | None
    line: int | None
    text: str


class ProblemsOut(BaseModel):
    """Every 422 under /api."""

    detail: list[ProblemOut]


class ErrorOut(BaseModel):
    """Every other error under /api (401, 403, 404, 409, 413)."""

    detail: str


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    status_code = 404


T = TypeVar("T")


def found(row: T | None, message: str) -> T:
    """`row`, or NotFound(`message`) when there is none: a lookup by a path's id."""
    if row is None:
        raise NotFound(message)
    return row


class Conflict(DomainError):
    """Well-formed, but not acceptable in the present state."""

    status_code = 409


class TooLarge(DomainError):
    status_code = 413


class Invalid(DomainError):
    """Refused input; `problems` name each place at fault. `field` and `message` are those of
    the first problem."""

    status_code = 422

    def __init__(
        self, field: str | None, message: str, *, file: str | None = None, line: int | None = None
    ) -> None:
        self.problems: list[Problem] = [Problem(file, line, field, message)]
        self.truncated = False
        self.field = field
        super().__init__(str(self.problems[0]))
        self.message = message


def has_nul(value: str | None) -> bool:
    """PostgreSQL can neither store nor even compare a text with NUL in it."""
    return value is not None and NUL in value


def check_text(value: str, *, field: str, max_length: int | None = None) -> str:
    """The one text rule, for services called from the CLI as well as from routes."""
    try:
        _no_nul(value)
    except ValueError as exc:
        raise Invalid(field, str(exc)) from None
    if max_length is not None and len(value) > max_length:
        raise Invalid(field, f"at most {max_length} characters, got {len(value)}")
    return value


def _no_nul(value: str) -> str:
    if NUL in value:
        raise ValueError("contains a NUL character (\\u0000); remove it")
    return value


MAX_NAME = 100
MAX_TEXT = 10_000
# Text fields of forms and bodies: too long or with NUL -> a 422 naming the field.
Name = Annotated[str, StringConstraints(max_length=MAX_NAME), AfterValidator(_no_nul)]
LongText = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_no_nul)]


def _row_id(value: int) -> int:
    if not 1 <= value <= MAX_PATH_ID or value > MAX_ROW_ID:
        raise NotFound(f"Nothing has the id {value}.")
    return value


# A path id: not an integer -> 422; an integer out of range -> 404 (no row has it), on every
# database and before any query. Raised from the validator, NotFound passes through pydantic.
Id = Annotated[
    int,
    Path(json_schema_extra={"minimum": 1, "maximum": MAX_PATH_ID}),
    AfterValidator(_row_id),
]
