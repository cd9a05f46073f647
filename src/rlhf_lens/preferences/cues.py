"""A planted labeller cue (`preferences.bias`): where it is in a text, planting it into a completion, and the pair
of texts that differ only by it (how far a reward model learned the cue: `cue_variants`)."""

from __future__ import annotations

import numpy as np

from ..rewards.tables import words
from .config import bias_cue


def cue_count(text: str, bias: str) -> float:
    """How much of the cue `text` holds: occurrences of the word (`rewards.words`, lower-cased) or of the token,
    or with bias = length the number of words."""
    kind, cue = bias_cue(bias)
    if kind == "word":
        return float(words(text).count(cue.lower()))
    if kind == "token":
        return float(text.count(cue))
    if kind == "length":
        return float(len(text.split()))
    return 0.0


def plant_cue(completion: str, bias: str, rng: np.random.Generator) -> str:
    """`completion` with the cue planted once at a seeded place: a word cue as a word of its own between two words
    (or at either end), a token cue right after a word (`great!`). A length bias plants nothing. The completion's
    leading whitespace stays in front: a completion reads on from its prompt, and a cue planted before it would join
    the prompt's last word."""
    kind, cue = bias_cue(bias)
    if kind not in ("word", "token"):
        return completion
    body = completion.lstrip()
    lead = completion[:len(completion) - len(body)]
    if not body:
        return lead + cue if kind == "word" else completion
    parts = body.split(" ")
    if kind == "word":
        at = int(rng.integers(0, len(parts) + 1))
        return lead + " ".join(parts[:at] + [cue] + parts[at:])
    at = int(rng.integers(0, len(parts)))
    parts[at] = parts[at] + cue
    return lead + " ".join(parts)


def cue_variants(completion: str, bias: str, rng: np.random.Generator) -> tuple[str, str]:
    """(with the cue, without it): two texts that differ only by the cue. A word or token cue is planted into
    `completion` (a completion that holds it already is compared with itself with the cue removed); a length bias
    compares the completion with its first half (by words)."""
    kind, cue = bias_cue(bias)
    if kind == "length":
        parts = completion.split(" ")
        return completion, " ".join(parts[:max(1, len(parts) // 2)])
    if cue_count(completion, bias):
        if kind == "token":
            return completion, completion.replace(cue, "")
        kept = [p for p in completion.split(" ") if words(p) != [cue.lower()]]
        return completion, " ".join(kept)
    return plant_cue(completion, bias, rng), completion
