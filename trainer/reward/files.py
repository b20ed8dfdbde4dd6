"""Preference files as training/evaluation groups, through the importer's own readers.

Any file `ranklab preferences import` reads (HH-RLHF chosen/rejected dialogues, TRL
prompt/chosen/rejected as strings or conversational message lists, a ranklab rankings export;
JSON Lines, gzip or Parquet) becomes a list of Groups: one per row, its prompt as a conversation
(an HH dialogue's turns before the last Assistant turn, a TRL conversational prompt list, else
the prompt text as one user message), its completions and that row's ranking. Invalid rows are
counted, not fatal: evaluation data from the wild has a few odd rows.
"""

from __future__ import annotations

from pathlib import Path

from app.imports import service as importer
from trainer.reward.model import Group


def read_preference_groups(path: Path, *, kind: str = "auto") -> tuple[list[Group], int]:
    """(groups, invalid rows skipped). A row whose conversation breaks app.chat's rules (an HH
    dialogue with an empty turn, say) is one of the invalid rows: the importer refuses it."""
    _, units, errors, _ = importer.parse(Path(path).read_bytes(), Path(path).name, kind=kind)
    bad = {e.line for e in errors}
    groups = []
    for u in units:
        if u.skip_reason is not None or len(u.completions) < 2:
            continue
        groups.append(
            Group(
                messages=u.messages,  # parsed and checked by the importer (app.chat's rules)
                completions=tuple(text for _, text, _ in u.completions),
                rankings=(tuple(u.ranks),),
            )
        )
    return groups, len(bad)
