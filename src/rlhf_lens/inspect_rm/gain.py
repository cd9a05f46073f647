"""The policy's RM gain, split: per held-out prompt, the RM's score of the tuned model's completion minus the base
model's (same prompt, same random stream), written as the sum of each feature class's contributions and the SAE's
error term (the constant cancels). Each part's mean is tested by sign flips over the prompts (under the null the
tuned and base completions of a prompt are exchangeable); its share is its mean over the total's."""

from __future__ import annotations

import numpy as np

from .. import nulls
from .features import CLASSES


def paired(differences: np.ndarray, seed: int = 0) -> dict:
    """{mean, se, p}: a per-prompt difference's mean, standard error and two-sided sign-flip p."""
    d = np.asarray(differences, dtype=np.float64)
    stats = nulls.mean_se(d) if len(d) else {"mean": 0.0, "se": 0.0}
    return {**stats, "p": nulls.paired_p_value(d, side="two-sided", seed=seed)}


def gain_split(tuned: np.ndarray, base: np.ndarray, tuned_error: np.ndarray, base_error: np.ndarray,
               classes: list[str], seed: int = 0) -> dict:
    """`tuned`/`base`: contributions [n_prompts, m] of the two completions of each prompt; the errors [n_prompts].
    Returns {prompts, total, split: {class or "error": {mean, se, p, share}}, not_gold: the cue and other classes
    together, per_feature: [m] mean gain}."""
    delta = np.asarray(tuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    error = np.asarray(tuned_error, dtype=np.float64) - np.asarray(base_error, dtype=np.float64)
    labels = np.asarray(classes)
    parts = {name: delta[:, labels == name].sum(1) for name in CLASSES}
    parts["error"] = error
    total = sum(parts.values())
    total_mean = float(total.mean()) if len(total) else 0.0
    split = {}
    for name, values in parts.items():
        stats = paired(values, seed)
        stats["share"] = stats["mean"] / total_mean if abs(total_mean) > 1e-12 else None
        split[name] = stats
    not_gold = paired(parts["cue"] + parts["other"], seed)  # the features with no gold alignment beyond its null
    not_gold["share"] = not_gold["mean"] / total_mean if abs(total_mean) > 1e-12 else None
    return {"prompts": len(total), "total": paired(total, seed), "split": split, "not_gold": not_gold,
            "per_feature": delta.mean(0) if len(delta) else np.zeros(delta.shape[1])}
