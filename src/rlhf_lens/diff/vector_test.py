"""The test behind "steering by this vector moves the reward beyond random directions", written once for the
diff's Δ_L steering (diff/steering.py) and the diff-SAE's latent steering (decompose/diffsae.py).

The vector and its random directions (matched on the KL they cause, `steering.kl_matched`) are sampled on the
same prompts with the same random numbers, so each prompt gives a paired reading. Two tests, both two-sided
(a claim says "raises" or "lowers" by the sign):
- paired: per-prompt sign flips of r_vector,i - mean_j r_random_j,i (`nulls.paired_p_value`): is the vector
  different from the random directions' average on these prompts?
- rank: the vector's mean reward among the random directions' mean rewards (`nulls.rank_p_value` on distances
  from the mean of all n + 1, exact under exchangeability; floor 1/(n + 1)): is it unlike a random direction?
  The paired test alone would call a random direction "different" from the others' average (each direction
  has its own fixed effect); the rank test is what limits that.
p = max(p_paired, p_rank); Holm (`nulls.holm`) across the vectors of one family (the analysed blocks, or the
latents of one block); a claim when the adjusted p <= level.
"""

from __future__ import annotations

import numpy as np

from .. import nulls


def vector_test(rewards: np.ndarray, null_rewards: np.ndarray, seed: int = 0) -> dict:
    """Test of one steered vector: `rewards` [P] per prompt, `null_rewards` [n, P] of its n random directions on
    the same prompts. Returns p, p_paired, p_rank, p_floor, the direction of the difference, and descriptive
    numbers (the null's mean/std/max/min of mean rewards, z of the vector's mean against them, the mean paired
    difference and its se)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    null_rewards = np.asarray(null_rewards, dtype=np.float64).reshape(-1, len(rewards))
    n = len(null_rewards)
    means = null_rewards.mean(1)
    observed = float(rewards.mean())
    diffs = rewards - null_rewards.mean(0)
    p_paired = nulls.paired_p_value(diffs, "two-sided", seed=seed)
    centre = (float(means.sum()) + observed) / (n + 1)  # of all n + 1: keeps the n + 1 distances exchangeable
    p_rank = nulls.rank_p_value(abs(observed - centre), np.abs(means - centre), "greater")
    std = float(means.std(ddof=1)) if n > 1 else 0.0
    diff_se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
    return {"p": max(p_paired, p_rank), "p_paired": p_paired, "p_rank": p_rank, "p_floor": nulls.p_floor(n),
            "n_random": n, "direction": "raises" if diffs.mean() > 0 else "lowers",
            "difference": float(diffs.mean()), "difference_se": diff_se,
            "null": {"rewards": means.tolist(), "mean": float(means.mean()), "std": std, "max": float(means.max()),
                     "min": float(means.min())},
            "z": (observed - float(means.mean())) / std if std > 0 else None}


def adjust(tests: list[dict], level: float) -> None:
    """Holm across `tests` (one family), in place: each gains `p_adjusted`, `family` (its size) and `claim`
    ("raises" / "lowers" when p_adjusted <= level, else None)."""
    adjusted = nulls.holm([t["p"] for t in tests])
    for t, p in zip(tests, adjusted):
        t.update(p_adjusted=float(p), family=len(tests), claim=t["direction"] if p <= level else None)


def describe(test: dict, level: float, family: str) -> str:
    """The test in words: both p-values, Holm's adjusted p against the level, and the floor where the number of
    random directions keeps a claim out of reach. `family`: what Holm ran across, e.g. "2 blocks"."""
    n, floor = test["n_random"], test["p_floor"]
    text = (f"paired sign-flip p={test['p_paired']:.3g}, rank p={test['p_rank']:.3g} among {n} KL-matched random "
            f"directions; p={test['p']:.3g}")
    if test["family"] > 1:
        text += f", Holm across {family}: {test['p_adjusted']:.3g}"
    text += f" {'<=' if test['p_adjusted'] <= level else '>'} level {level:g}"
    reachable = floor * test["family"]
    if reachable > level:
        text += (f"; with {n} random directions p cannot go below {floor:.3g}"
                 + (f" ({reachable:.3g} after Holm)" if test["family"] > 1 else "")
                 + f": at least {needed_random(test['family'], level)} are needed for a claim at this level")
    elif n < 19:
        text += f" (p floor {floor:.3g} with {n} random directions)"
    return text


def needed_random(family: int, level: float) -> int:
    """The fewest random directions whose rank p floor, times the Holm family size, reaches the level."""
    return int(np.ceil(family / level - 1 - 1e-9))


def curve_verdicts(curves: list[dict], level: float) -> None:
    """Holm across the blocks whose Δ was tested, then each curve's `verdict` (in place)."""
    tested = [c["test"] for c in curves if c["test"] is not None]
    adjust(tested, level)
    family = f"{len(tested)} blocks"
    for c in curves:
        t = c["test"]
        if t is None:
            c["verdict"] = ("no change distinguishable from random directions (Δ is zero; not tested)"
                            if c["delta_norm"] == 0 else f"not tested: {c['reason']}")
            continue
        row = next(x for x in c["delta"] if x["alpha"] == c["alpha"])
        steer = f"steering base by {c['alpha']:g}·Δ_{c['layer']} (gain {row['gain']:+.3g} ± {row['gain_se']:.2g})"
        if t["claim"]:
            beyond = "beyond" if t["direction"] == "raises" else "below"
            c["verdict"] = (f"{steer} {t['direction']} the reward {beyond} random directions matched on KL "
                            f"({describe(t, level, family)})")
        else:
            c["verdict"] = (f"no change distinguishable from random directions matched on KL: {steer} differs from "
                            f"their mean by {t['difference']:+.3g} ± {t['difference_se']:.2g}; "
                            f"{describe(t, level, family)}")
