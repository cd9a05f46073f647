"""The verdict rule: does tuned - base exceed the seed spread? (used by the pipeline and the report)"""

from __future__ import annotations

import math
from typing import Any

from .format import _num, _signed, _stat


def verdict(base: dict, tuned: dict) -> str:
    """One plain sentence: does tuned - base exceed the seed spread?

    `base` and `tuned` are {"mean": x, "std": s} over seeds, optionally with "n" (number of seeds)
    or "values" (one per seed). The rule: spread = sqrt(std_base^2 + std_tuned^2), the std of the
    difference between one tuned and one base seed. |tuned - base| > 2 x spread: larger than seed
    noise; > 1 x spread: suggestive, not conclusive; otherwise: not distinguishable from seed noise.
    With one seed, or no std given, there is no spread to compare against, and it says so.
    """
    level, diff, spread = _verdict_parts(base, tuned)
    if level == "missing":
        return "no comparison: the base or tuned value is missing"
    head = f"tuned - base = {_signed(diff)}"
    if level == "one-seed":
        return f"{head}; one seed: no spread to compare against"
    if level == "zero-spread":
        return f"{head}; the seed spread is 0: no spread to compare against"
    if level == "clear":
        return f"{head}, more than twice the combined seed spread ({_num(spread)}): larger than seed noise"
    if level == "weak":
        return f"{head}, above the combined seed spread ({_num(spread)}) but not twice it: suggestive, not conclusive"
    return f"{head}, within the combined seed spread ({_num(spread)}): not distinguishable from seed noise"


def _verdict_parts(base: Any, tuned: Any) -> tuple[str, float, float]:
    """(level, tuned - base, spread); level: missing, one-seed, zero-spread, clear, weak or within."""
    b, t = _stat(base), _stat(tuned)
    if b["mean"] is None or t["mean"] is None:
        return "missing", 0.0, 0.0
    diff = t["mean"] - b["mean"]
    if (b["n"] is not None and b["n"] < 2) or (t["n"] is not None and t["n"] < 2) or (b["std"] is None and t["std"] is None):
        return "one-seed", diff, 0.0
    spread = math.hypot(b["std"] or 0.0, t["std"] or 0.0)
    if spread == 0:
        return "zero-spread", diff, 0.0
    if abs(diff) > 2 * spread:
        return "clear", diff, spread
    if abs(diff) > spread:
        return "weak", diff, spread
    return "within", diff, spread
