"""Preference pairs on disk: TRL's and OpenRLHF's format (JSONL rows with `prompt`, `chosen`, `rejected`, the
completions without the prompt), plus what pairs sampled here also know (the gold's scores, what decided the label).
`read_pairs` reads a user's file (JSONL, CSV or Parquet, columns named as OpenRLHF's --prompt_key/--chosen_key/
--rejected_key); every problem is one line naming the file, the row and what to change."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..rules import Namer, field_name

DECIDERS = ("gold", "bias", "noise")
"""What decided a sampled pair's label: the gold reward, the planted bias, or the label noise (a flipped gold)."""


@dataclass
class Pair:
    prompt: str
    chosen: str
    """The preferred completion (without the prompt; the RM reads prompt + chosen)."""
    rejected: str
    gold_chosen: float | None = None
    """The gold reward of prompt + chosen (None: a user's pair, no gold known)."""
    gold_rejected: float | None = None
    decided_by: str | None = None
    """gold, bias or noise (`DECIDERS`); None for a user's pair."""
    planted: bool = False
    """The bias's cue was planted into the chosen completion (it held none of its own)."""
    margin: float | None = None
    """TRL's margin column: for a sampled pair the gold's difference |gold_chosen - gold_rejected|."""

    def texts(self) -> tuple[str, str]:
        """(prompt + chosen, prompt + rejected): what a reward model scores."""
        return self.prompt + self.chosen, self.prompt + self.rejected


def write_pairs(path: str | os.PathLike, pairs: list[Pair]) -> None:
    """JSONL in TRL's preference format; the extra fields only where known (TRL and OpenRLHF ignore them)."""
    from ..io import write_text

    lines = []
    for pair in pairs:
        row = {k: v for k, v in dataclasses.asdict(pair).items()
               if v is not None and not (k == "planted" and not v)}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    write_text(path, "".join(lines))


def read_pairs(path: str | os.PathLike, prompt_key: str = "prompt", chosen_key: str = "chosen",
               rejected_key: str = "rejected", key: Namer = field_name) -> list[Pair]:
    """The pairs of a JSONL, CSV or Parquet file. `key` spells the column settings in messages (`--chosen-key`,
    `preferences.chosen_key`). Refused, in one line: a missing or non-UTF-8 file, a missing column, no rows, a
    non-text value, a row whose chosen and rejected are the same text."""
    from ..data import read_rows

    path = Path(path)
    rows = read_rows(path, "pair file")
    if not rows:
        raise UserError(f"pair file {path} holds no pairs; give a file with {prompt_key}, {chosen_key} and "
                        f"{rejected_key} columns")
    for setting, column in (("prompt_key", prompt_key), ("chosen_key", chosen_key), ("rejected_key", rejected_key)):
        if column not in rows[0]:
            raise UserError(f"pair file {path} has no column {column!r} (its columns: "
                            f"{', '.join(map(str, rows[0]))}); name the column with {key(setting)}")
    pairs = []
    for n, row in enumerate(rows, 1):
        values = [row.get(c) for c in (prompt_key, chosen_key, rejected_key)]
        if isinstance(values[1], list) or isinstance(values[2], list):
            raise UserError(f"pair file {path} row {n}: {chosen_key} is a list of messages (a conversational "
                            "dataset); give the completions as text")
        if not all(isinstance(v, str) for v in values):
            raise UserError(f"pair file {path} row {n}: {prompt_key}, {chosen_key} and {rejected_key} must be "
                            f"text (got {', '.join(type(v).__name__ for v in values)})")
        prompt, chosen, rejected = values
        if not chosen.strip() or not rejected.strip():
            raise UserError(f"pair file {path} row {n}: an empty {chosen_key if not chosen.strip() else rejected_key}"
                            "; drop that row")
        if chosen == rejected:
            raise UserError(f"pair file {path} row {n}: {chosen_key} and {rejected_key} are the same text; "
                            "drop that row (it carries no preference)")
        pairs.append(Pair(prompt, chosen, rejected, gold_chosen=_number(row.get("gold_chosen")),
                          gold_rejected=_number(row.get("gold_rejected")),
                          decided_by=row.get("decided_by") if row.get("decided_by") in DECIDERS else None,
                          planted=bool(row.get("planted", False)), margin=_number(row.get("margin"))))
    return pairs


def _number(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
