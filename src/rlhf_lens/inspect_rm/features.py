"""What each of the RM's SAE features does to its score, with a null for each claim.

- margin (SAFER, arXiv 2507.00665): its mean contribution to score(chosen) - score(rejected) over the pairs, a
  one-sample t test of the pairs' differences, Benjamini-Hochberg over the features;
- gold alignment: the correlation over texts of its contribution with the gold's reward, Pearson's t test,
  Benjamini-Hochberg over the features;
- class: "gold" (aligned, r > 0), "anti-gold" (aligned, r < 0), "cue" (pays on the pairs' margin beyond its null
  with no gold alignment beyond its null: what the labels rewarded that the gold does not) or "other".

Both tests are analytic (a permutation p cannot go below 1/(1 + draws), and BH over ~1000 features needs ~1e-5).
Their level is measured where they run: `shuffled_counts` repeats the whole procedure with the gold shuffled over
the texts and with each pair's chosen and rejected swapped at random (the nulls, where nothing is real) and counts
the features it names; inspect_rm.json reports those counts beside the real ones."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .. import nulls

CLASSES = ("gold", "anti-gold", "cue", "other")


def margin(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature (columns of the contributions [n_pairs, m]): mean and se of chosen - rejected, the t test's
    two-sided p and its BH q. A feature that never differs has p = 1."""
    differences = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    n, m = differences.shape
    mean = differences.mean(0) if n else np.zeros(m)
    se = differences.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(m)
    p = np.ones(m)
    live = se > 1e-12
    if n > 1:
        p[live] = 2 * stats.t.sf(np.abs(mean[live] / se[live]), df=n - 1)
    return {"mean": mean, "se": se, "p": p, "q": nulls.benjamini_hochberg(p)}


def gold_alignment(contributions: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature: Pearson r over texts of its contribution [n, m] with the gold [n], the t test's two-sided p and
    its BH q. A feature constant over the texts has r = 0, p = 1."""
    x = np.asarray(contributions, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    n, m = x.shape
    xc = x - x.mean(0)
    norms = np.sqrt((xc ** 2).sum(0))
    live = norms > 1e-12
    gc = g - g.mean()
    if n < 3 or not np.any(gc):
        return {"r": np.zeros(m), "p": np.ones(m), "q": np.ones(m)}
    r = np.zeros(m)
    r[live] = (gc / np.sqrt((gc ** 2).sum())) @ (xc[:, live] / norms[live])
    r = np.clip(r, -1.0, 1.0)
    p = np.ones(m)
    t = r[live] * np.sqrt((n - 2) / np.maximum(1 - r[live] ** 2, 1e-300))
    p[live] = 2 * stats.t.sf(np.abs(t), df=n - 2)
    return {"r": r, "p": p, "q": nulls.benjamini_hochberg(p)}


def classify(alignment: dict[str, np.ndarray], margins: dict[str, np.ndarray], level: float) -> list[str]:
    """Each feature's class (`CLASSES`), from its gold alignment's and its margin's BH q at `level`."""
    out = []
    for r, q_gold, mean, q_margin in zip(alignment["r"], alignment["q"], margins["mean"], margins["q"]):
        if q_gold <= level:
            out.append("gold" if r > 0 else "anti-gold")
        elif q_margin <= level and mean > 0:
            out.append("cue")
        else:
            out.append("other")
    return out


def shuffled_counts(contributions: np.ndarray, gold: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
                    level: float, shuffles: int, seed: int) -> dict:
    """The procedure on its nulls, `shuffles` times: the gold shuffled over the texts (how many features it calls
    gold-aligned) and each pair's sides swapped at random (how many it calls paid by the margin). Mean and max."""
    rng = np.random.default_rng([seed, 0x5AFE])
    aligned, paid = [], []
    g = np.asarray(gold, dtype=np.float64)
    differences = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    for _ in range(shuffles):
        aligned.append(int((gold_alignment(contributions, g[rng.permutation(len(g))])["q"] <= level).sum()))
        signs = rng.choice([-1.0, 1.0], size=(len(differences), 1))
        paid.append(int((margin(signs * differences, np.zeros_like(differences))["q"] <= level).sum()))
    return {"shuffles": shuffles,
            "gold_aligned": {"mean": float(np.mean(aligned)) if aligned else 0.0, "max": max(aligned, default=0)},
            "margin": {"mean": float(np.mean(paid)) if paid else 0.0, "max": max(paid, default=0)}}
