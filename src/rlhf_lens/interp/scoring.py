"""Scoring an explanation: Pearson correlation between simulated and true activations.

A constant vector (all zeros included) carries no information about where a feature fires,
so it scores 0, never NaN; so do vectors of fewer than two values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Below this standard deviation a vector counts as constant (float32 activations are noisier than this).
_CONSTANT_STD = 1e-12


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two equally long vectors; 0.0 when either is constant or shorter than 2."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally long vectors (got {a.size} and {b.size})")
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    sa, sb = np.sqrt((a * a).mean()), np.sqrt((b * b).mean())
    if sa < _CONSTANT_STD or sb < _CONSTANT_STD:
        return 0.0
    return float(np.clip((a * b).mean() / (sa * sb), -1.0, 1.0))


def simulation_score(simulated: Sequence[Sequence[float]], true: Sequence[Sequence[float]]) -> float:
    """Pearson over all tokens of all scoring records at once (records concatenated), as Bills et al."""
    if len(simulated) != len(true) or any(len(s) != len(t) for s, t in zip(simulated, true)):
        raise ValueError("simulated and true activations must have the same records and lengths")
    flat_sim = [v for record in simulated for v in record]
    flat_true = [v for record in true for v in record]
    return pearson(flat_sim, flat_true)


def mean_score(scores: Sequence[float]) -> float:
    """Mean of per-feature scores (0.0 for none)."""
    return float(np.mean(scores)) if len(scores) else 0.0
