"""What a trained reward model learned, on held-out pairs: its accuracy against the labels, against the gold (the
RM can agree with noisy labels and still miss the gold), per what decided the label, and how far it prefers a
planted cue (its score on two texts that differ only by the cue)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..nulls import binomial_interval
from ..preferences.cues import cue_variants
from ..preferences.pairs import DECIDERS, Pair

Scorer = Callable[[list[str]], "np.ndarray"]
"""Texts -> the RM's scores (one each)."""


def rate(k: int, n: int) -> dict:
    """{share, k, n, interval}: a share with its 95% Clopper-Pearson interval (share None when n = 0)."""
    lo, hi = binomial_interval(k, n)
    return {"share": k / n if n else None, "k": k, "n": n, "interval": [lo, hi]}


def pair_accuracy(chosen_scores: np.ndarray, rejected_scores: np.ndarray, pairs: list[Pair]) -> dict:
    """{labels, gold, by_decider}: the share of `pairs` the RM ranks as labelled (score of chosen > rejected);
    as the gold ranks them (pairs whose gold_chosen and gold_rejected are known and differ; None when no pair has
    a gold); and against the labels per `decided_by` group (gold, bias, noise; only groups present). Each a
    `rate` (share, k, n, 95% interval)."""
    chosen_scores, rejected_scores = np.asarray(chosen_scores), np.asarray(rejected_scores)
    agrees = chosen_scores > rejected_scores
    gold_known = [i for i, p in enumerate(pairs) if p.gold_chosen is not None and p.gold_rejected is not None
                  and p.gold_chosen != p.gold_rejected]
    gold_agrees = [bool(agrees[i]) == (pairs[i].gold_chosen > pairs[i].gold_rejected) for i in gold_known]
    by_decider = {}
    for decider in DECIDERS:
        members = [i for i, p in enumerate(pairs) if p.decided_by == decider]
        if members:
            by_decider[decider] = rate(int(agrees[members].sum()), len(members))
    return {"labels": rate(int(agrees.sum()), len(pairs)),
            "gold": rate(sum(gold_agrees), len(gold_known)) if gold_known else None,
            "by_decider": by_decider}


def cue_preference(score: Scorer, pairs: list[Pair], bias: str, seed: int = 0) -> dict | None:
    """How far the RM prefers the cue: over every held-out completion (chosen and rejected of `pairs`), the share
    where score(prompt + with the cue) > score(prompt + without it) (`preferences.cues.cue_variants`, seeded),
    with its 95% interval, the mean score difference, and that difference in standard deviations of the scores of
    the texts without the cue (`standardized`: comparable across RMs, whose score scales differ). A single RM that
    learned nothing of the cue still shifts every planted text a little the same way, so its share is not 0.5
    but one draw of the null: compare an RM with its placebo. None without a bias."""
    if not bias:
        return None
    rng = np.random.default_rng(seed)
    with_cue, without_cue = [], []
    for pair in pairs:
        for completion in (pair.chosen, pair.rejected):
            plus, minus = cue_variants(completion, bias, rng)
            if plus != minus:
                with_cue.append(pair.prompt + plus)
                without_cue.append(pair.prompt + minus)
    if not with_cue:
        return {"bias": bias, **rate(0, 0), "mean_difference": None, "standardized": None}
    both = np.asarray(score(with_cue + without_cue), dtype=np.float64)
    difference = both[:len(with_cue)] - both[len(with_cue):]
    spread = float(both[len(with_cue):].std())
    return {"bias": bias, **rate(int((difference > 0).sum()), len(difference)),
            "mean_difference": float(difference.mean()),
            "standardized": float(difference.mean()) / spread if spread > 0 else None}
