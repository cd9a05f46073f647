"""The tests behind every "beyond the null" verdict, written once (docs/calibration.md).

- `rank_p_value`: where an observed statistic falls among null draws that are exchangeable with it under the
  null (random directions, random token sets, placebo seeds). p = (1 + #null at least as extreme) / (1 + n): exact
  under exchangeability, so with n draws it can never go below `p_floor(n)` = 1 / (n + 1) (19 draws: 0.05).
- `prediction_p_value`: one new draw against n draws of the same normal law, T = (x - mean) / (s sqrt(1 + 1/n))
  ~ t(n - 1): no floor (a rank p-value needs 20m - 1 draws for a claim under Holm across m tests), at the price
  of assuming the draws normal (means over prompts are close to it); `bench/calibration.py` measures what that
  costs in false positives.
- `paired_p_value`: a per-unit paired comparison (prompts sampled with common random numbers) by sign flips of
  the differences: no normality assumed; exact when every flip is enumerated, else seeded Monte Carlo.
- `sign_flip_z`: the same sign-flip statistic for many columns at once (one per latent) with its exact null
  variance, read against the normal (a document-level swap of base and tuned, many documents).
- `holm` (family-wise, across analysed blocks) and `benjamini_hochberg` (false-discovery rate, across latents):
  adjusted p-values to compare with the level.
- `binomial_interval`: Clopper-Pearson interval of a rate (a false-positive rate over null cases).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIDES = ("greater", "less", "two-sided")
MAX_EXACT_UNITS = 16
"""Up to this many units every sign pattern is enumerated (2^16 = 65,536); above it, seeded Monte Carlo."""


def mean_se(values: Sequence[float] | np.ndarray) -> dict:
    """Mean and standard error (sample std, ddof 1, / sqrt(n)) of per-unit values; se 0 for one value."""
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "se": se}


def p_floor(n_null: int) -> float:
    """The smallest rank p-value n null draws can give."""
    return 1.0 / (n_null + 1)


def rank_p_value(observed: float, null: Sequence[float] | np.ndarray, side: str = "greater") -> float:
    """(1 + #null draws at least as extreme as `observed`) / (1 + #draws); 1.0 with no draws."""
    _check_side(side)
    null = np.asarray(null, dtype=np.float64)
    if len(null) == 0:
        return 1.0
    if side == "greater":
        extreme = int((null >= observed).sum())
    elif side == "less":
        extreme = int((null <= observed).sum())
    else:
        centre = float(null.mean())
        extreme = int((np.abs(null - centre) >= abs(observed - centre)).sum())
    return (1 + extreme) / (1 + len(null))


def prediction_p_value(observed: float, null: Sequence[float] | np.ndarray, side: str = "greater") -> float:
    """t test of `observed` as one more draw of the law that gave `null` (normal, unknown mean and variance):
    T = (observed - mean) / (std * sqrt(1 + 1/n)), n - 1 degrees of freedom. With fewer than 2 draws or a zero
    spread it falls back to `rank_p_value` (exact, floored)."""
    from scipy.stats import t

    _check_side(side)
    null = np.asarray(null, dtype=np.float64)
    n = len(null)
    std = float(null.std(ddof=1)) if n > 1 else 0.0
    if std == 0.0:
        return rank_p_value(observed, null, side)
    stat = (observed - float(null.mean())) / (std * np.sqrt(1 + 1 / n))
    if side == "greater":
        return float(t.sf(stat, n - 1))
    if side == "less":
        return float(t.cdf(stat, n - 1))
    return float(min(1.0, 2 * t.sf(abs(stat), n - 1)))


def paired_p_value(differences: Sequence[float] | np.ndarray, side: str = "greater", n_flips: int = 9999,
                   seed: int = 0) -> float:
    """Sign-flip test of mean(differences) = 0 (each unit's difference equally likely to have either sign under
    the null). Exact with <= MAX_EXACT_UNITS units; else `n_flips` seeded flips, p = (1 + #extreme) / (1 + n_flips).
    1.0 for no units or all differences zero."""
    _check_side(side)
    d = np.asarray(differences, dtype=np.float64)
    if len(d) == 0 or not np.any(d):
        return 1.0
    observed = float(d.sum())
    if len(d) <= MAX_EXACT_UNITS:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        null = signs @ d
        return float(_extreme(null, observed, side).mean())
    rng = np.random.default_rng([seed, 0x5F1])
    null = rng.choice([-1.0, 1.0], size=(n_flips, len(d))) @ d
    return (1 + int(_extreme(null, observed, side).sum())) / (1 + n_flips)


def sign_flip_z(per_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of `per_unit` [units, columns] (e.g. documents x latents: each document's summed tuned - base
    code): z = sum / sqrt(sum of squares), the sum standardised by its exact variance under random sign flips of
    the units, and the two-sided normal p-value of it (1.0 where a column is all zero)."""
    from scipy.stats import norm

    x = np.asarray(per_unit, dtype=np.float64)
    total, scale = x.sum(0), np.sqrt((x ** 2).sum(0))
    z = np.divide(total, scale, out=np.zeros_like(total), where=scale > 0)
    p = np.where(scale > 0, 2 * norm.sf(np.abs(z)), 1.0)
    return z, p


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error at most the level when adjusted p <= level)."""
    p = np.asarray(p_values, dtype=np.float64)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (n - np.arange(n)) * p[order]))
    out = np.empty(n)
    out[order] = adjusted
    return out


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values): false-discovery rate at most the level among
    columns with q <= level (independent or positively dependent tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty(n)
    out[order] = adjusted
    return out


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a rate k/n; (0, 1) for n = 0."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def _extreme(null: np.ndarray, observed: float, side: str) -> np.ndarray:
    eps = 1e-12 * max(1.0, abs(observed))  # sums in another order: equal up to rounding counts as equal
    if side == "greater":
        return null >= observed - eps
    if side == "less":
        return null <= observed + eps
    return np.abs(null) >= abs(observed) - eps


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)} (got {side!r})")
