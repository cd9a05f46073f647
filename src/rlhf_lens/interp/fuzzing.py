"""Fuzzing (Paulo et al. 2025): are the marked tokens the ones the explanation describes?

Each activating window (samples.py) is shown twice: once with the feature's activating tokens marked
<<like this>> (tokens at >= `MARK_SHARE` of the window's maximum, the peak always among them): a positive; once
with as many tokens marked at random (seeded) among those where the feature is silent: a negative, "wrongly
marked". P(yes) is read from the scorer's log-probabilities (answers.py); the score is its AUROC.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from .examples import FeatureExamples, Record

SYSTEM = "Answer yes or no."
"""Kept short: a small local scorer pays for every prompt token."""
QUESTION = "Are the tokens marked <<like this>> the ones the explanation describes? Answer yes or no."
MARK_SHARE = 0.5
"""A token is marked as activating when its activation is at least this share of the window's maximum."""
_EDGES = re.compile(r"^(\s*)(.*?)(\s*)$", re.S)


def fuzzing_messages(explanation: str, text: str) -> list[dict]:
    """The chat prompt asking whether the tokens marked in `text` are what `explanation` describes."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\nText: {text}\n{QUESTION}"}]


def mark(tokens: list[str], marked: set[int]) -> str:
    """The tokens joined, each marked one wrapped in << >> (outside its spaces); adjacent marks merge into one,
    so the pieces of one word read as <<wonderful>>."""
    out = []
    for i, piece in enumerate(tokens):
        if i in marked:
            lead, core, trail = _EDGES.match(piece).groups()
            out.append(f"{lead}<<{core}>>{trail}" if core else f"<<{piece}>>")
        else:
            out.append(piece)
    return "".join(out).replace(">><<", "")


def activating_positions(record: Record) -> set[int]:
    """Tokens at >= MARK_SHARE of the window's maximum, and at least the (first) peak."""
    top = max(record.values, default=0.0)
    chosen = {i for i, v in enumerate(record.values) if top > 0 and v >= MARK_SHARE * top}
    if record.values:
        chosen.add(int(np.argmax(record.values)))
    return chosen


def fuzzing_cases(item: FeatureExamples, seed: int = 0) -> tuple[list[str], list[bool], dict]:
    """Per activating window: the correctly marked text (positive) and, where it has silent tokens, a copy with
    as many of them marked at random (negative); the counts recorded (n_activating, n_wrong)."""
    rng = np.random.default_rng([seed, zlib.crc32(item.sae.encode()), item.feature])
    right, wrong = [], []
    for record in item.activating:
        chosen = activating_positions(record)
        right.append(mark(record.tokens, chosen))
        silent = [i for i, v in enumerate(record.values) if v <= 0]
        if silent:
            picked = rng.choice(len(silent), size=min(len(chosen), len(silent)), replace=False)
            wrong.append(mark(record.tokens, {silent[int(k)] for k in picked}))
    return right + wrong, [True] * len(right) + [False] * len(wrong), {"n_activating": len(right),
                                                                       "n_wrong": len(wrong)}
