"""Preference files as training/evaluation groups, through the importer's own readers.

Any file `ranklab preferences import` reads (HH-RLHF chosen/rejected dialogues, TRL
prompt/chosen/rejected, a ranklab rankings export; JSON Lines, gzip or Parquet) becomes a list
of Groups: one per row, its completions and that row's ranking. Invalid rows are counted, not
fatal: evaluation data from the wild has a few odd rows.
"""

from __future__ import annotations

from pathlib import Path

from app.imports import service as importer
from trainer.reward.model import Group


def read_preference_groups(path: Path, *, kind: str = "auto") -> tuple[list[Group], int]:
    """(groups, invalid rows skipped)."""
    _, units, errors, _ = importer.parse(Path(path).read_bytes(), Path(path).name, kind=kind)
    groups = [
        Group(
            prompt=u.prompt,
            completions=tuple(text for _, text, _ in u.completions),
            rankings=(tuple(u.ranks),),
        )
        for u in units
        if u.skip_reason is None and len(u.completions) >= 2
    ]
    return groups, len({e.line for e in errors})
