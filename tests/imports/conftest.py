"""What the preference-import tests share."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session

from app.imports import service as importer
from app.imports.upload import Upload


def jsonl(rows: list[object]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def refused_places(
    session: Session, rows: list[object] | bytes, filename: str = "t.jsonl"
) -> list[tuple[int, str]]:
    """Import `rows` (records, or a file's bytes), which must be refused: each error's (line, field)."""
    data = rows if isinstance(rows, bytes) else jsonl(rows)
    with pytest.raises(importer.ImportRefused) as exc:
        importer.import_preferences(session, Upload(data=data, filename=filename, name="refused"))
    return [(e.line, e.field) for e in exc.value.errors]
