"""Placebo tune: the same PPO settings against a utility table whose values are shuffled over its words.

Its diff to the base model shows what a tune of that size changes regardless of the reward (topic drift,
temperature), the null for the real tune's diff. `shuffled_table` permutes the values (seeded), `write_table`
writes a table that `table:FILE` (rewards.load_utility_table) reads back exactly.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..errors import UserError

MAX_DRAWS = 100


def shuffled_table(table: dict[str, float], seed: int) -> dict[str, float]:
    """The same words with the same multiset of values, permuted over the words (seeded by `seed` alone).

    When the values are not all equal the assignment differs from the original (a permutation that happens to
    give every word its own value back is drawn again)."""
    import numpy as np  # here, so that reading a reward spec does not import numpy

    if not table:
        raise UserError("the utility table is empty; a placebo needs words to shuffle")
    words = list(table)
    values = np.array([float(table[w]) for w in words])
    rng = np.random.default_rng([seed, 0x91AC])
    for _ in range(MAX_DRAWS):
        permuted = values[rng.permutation(len(values))]
        if not np.array_equal(permuted, values) or np.all(values == values[0]):
            break
    return {w: float(v) for w, v in zip(words, permuted)}


def write_table(table: dict[str, float], path: str | os.PathLike) -> Path:
    """Write `table` atomically as .json (an object word -> value), .csv or otherwise tab-separated (.tsv), by the
    suffix of `path`; `rewards.load_utility_table(f"table:{path}")` returns it unchanged (values round-trip
    exactly; words are lower-case there, so give lower-case words). Returns the path."""
    from ..io import write_text

    path = Path(path)
    if not table:
        raise UserError("the utility table is empty; nothing to write")
    bad = [w for w in table if not str(w).strip() or str(w).strip().lower() != str(w)]
    if bad:
        raise UserError(f"table word {bad[0]!r} would not read back as itself (words must be lower-case, "
                        "non-empty and without surrounding spaces)")
    if path.suffix.lower() == ".json":
        write_text(path, json.dumps({w: float(v) for w, v in table.items()}, indent=0, ensure_ascii=False) + "\n")
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="," if path.suffix.lower() == ".csv" else "\t", lineterminator="\n")
    writer.writerow(["word", "value"])  # a header, which the reader skips
    for word, value in table.items():
        writer.writerow([word, repr(float(value))])
    write_text(path, buffer.getvalue())
    return path
