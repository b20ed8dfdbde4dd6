"""JSON Lines read line by line, an error naming the file and the line (PPO-ptx texts, PPO
prompt files)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def json_rows(lines: Iterable[str], where: str) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) of every non-blank line; ValueError "{where}, line N:
    not JSON (...)" at the first line that is not JSON."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}, line {n}: not JSON ({exc.msg})") from exc
