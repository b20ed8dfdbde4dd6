"""What every import does first: the file handed in, the new set's name checked, every row parsed,
and a refusal (nothing written) unless the rows are usable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from app.imports.parsing import MAX_LISTED, RowError, refuse_unless_usable
from app.imports.writing import check_name

T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    """A file to become a new set: its bytes and name, the set's name and how to read the rows
    (`kind` "auto" detects it; `skip_invalid` imports the good rows and lists the bad)."""

    data: bytes
    filename: str
    name: str
    kind: str = "auto"
    skip_invalid: bool = False
    created_by_id: int | None = None


@dataclass(frozen=True)
class Accepted(Generic[T]):
    """An upload's usable rows, with the set's cleaned name and the rows it skipped."""

    name: str
    filename: str
    kind: str
    rows: list[T]
    skipped: list[RowError]
    total: int

    def report(self) -> dict[str, Any]:
        """What the set page shows of its import."""
        return {
            "kind": self.kind,
            "rows": self.total,
            "imported": len(self.rows),
            "skipped": len(self.skipped),
            "skipped_rows": [str(e) for e in self.skipped[:MAX_LISTED]],
        }


def accept(
    session: Session,
    upload: Upload,
    parse: Callable[..., tuple[str, list[T], list[RowError], int]],
) -> Accepted[T]:
    """`upload`'s rows through `parse`; ImportRefused when the name is taken or empty, or a row is
    invalid (unless skip_invalid), or no row is valid."""
    name, filename = upload.name.strip(), upload.filename.replace("\x00", "")  # the name is stored too
    check_name(session, name)
    kind, rows, errors, total = parse(upload.data, filename, kind=upload.kind)
    refuse_unless_usable(rows, errors, total, skip_invalid=upload.skip_invalid)
    return Accepted(name=name, filename=filename, kind=kind, rows=rows, skipped=errors, total=total)
