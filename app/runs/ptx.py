"""PPO-ptx pretraining text: JSON Lines of {"text": ...}, read alike by the PPO form (an
upload), the `train_ppo` job and `python -m trainer.ppo.launch` (a file). No torch here."""

from __future__ import annotations

from collections.abc import Iterable

from app.jsonl import json_rows


def ptx_texts(lines: Iterable[str], where: str) -> list[str]:
    """Every line's "text", blank lines skipped; ValueError naming `where` and the line when a
    line is not an object with a string "text", or when there is no text at all."""
    texts = []
    for n, row in json_rows(lines, where):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{where}, line {n}: each line must be an object with a string field 'text'")
        texts.append(row["text"])
    if not texts:
        raise ValueError(f"{where}: no texts")
    return texts
