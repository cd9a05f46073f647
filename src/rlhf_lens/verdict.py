"""The verdict rule: does tuned - base exceed the seed spread? Torch-free and report-free: the pipeline's scores
stage writes its sentence into results.json, the report renders it (and colours the headline by its level).

The sentence writes numbers as the report writes them, so the report's number formatting lives here too
(`finite_float`, `format_number`, `seed_stat`) and the report imports it from here."""

from __future__ import annotations

import math
from typing import Any


def finite_float(x: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, text, NaN)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def format_number(x: Any, digits: int = 3) -> str:
    """A number for people: 3 significant digits, thousands separated; '-' when missing."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if abs(x) < 1e-12:  # float residue of a mean that is 0 (e.g. 6.9e-18), not a measurement
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    if x != 0 and abs(x) < 1e-4:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def seed_stat(d: Any) -> dict:
    """{"mean", "std", "n"} from a headline value: a dict (mean/std/n/values), a bare number or None."""
    if isinstance(d, dict):
        values = [v for v in (finite_float(x) for x in d.get("values") or []) if v is not None]
        n = d.get("n", len(values) if values else None)
        return {"mean": finite_float(d.get("mean")), "std": finite_float(d.get("std")),
                "n": n if isinstance(n, int) else None}
    return {"mean": finite_float(d), "std": None, "n": None}


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "") + format_number(x)


def verdict(base: dict, tuned: dict) -> str:
    """One plain sentence: does tuned - base exceed the seed spread?

    `base` and `tuned` are {"mean": x, "std": s} over seeds, optionally with "n" (number of seeds)
    or "values" (one per seed). The rule: spread = sqrt(std_base^2 + std_tuned^2), the std of the
    difference between one tuned and one base seed. |tuned - base| > 2 x spread: larger than seed
    noise; > 1 x spread: suggestive, not conclusive; otherwise: not distinguishable from seed noise.
    With one seed, or no std given, there is no spread to compare against, and it says so.
    """
    level, diff, spread = verdict_level(base, tuned)
    if level == "missing":
        return "no comparison: the base or tuned value is missing"
    head = f"tuned - base = {_signed(diff)}"
    if level == "one-seed":
        return f"{head}; one seed: no spread to compare against"
    if level == "zero-spread":
        return f"{head}; the seed spread is 0: no spread to compare against"
    if level == "clear":
        return f"{head}, more than twice the combined seed spread ({format_number(spread)}): larger than seed noise"
    if level == "weak":
        return (f"{head}, above the combined seed spread ({format_number(spread)}) but not twice it: "
                "suggestive, not conclusive")
    return f"{head}, within the combined seed spread ({format_number(spread)}): not distinguishable from seed noise"


def verdict_level(base: Any, tuned: Any) -> tuple[str, float, float]:
    """(level, tuned - base, spread); level: missing, one-seed, zero-spread, clear, weak or within."""
    b, t = seed_stat(base), seed_stat(tuned)
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
