"""Label sampled completions into preference pairs by a gold reward, with seeded label noise and a planted
labeller bias (`PreferenceConfig`; the rule in docs/preferences.md)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import UserError
from ..rewards import scored_texts
from .config import PreferenceConfig, bias_cue
from .cues import cue_count, plant_cue
from .pairs import Pair
from .sample import stream_seed

SUBSET_STREAM, PLANT_STREAM = 10, 11
"""Seed streams of `label_pairs`: which pairs the bias and the noise decide, and where a cue is planted."""

Gold = Callable[[list[str]], list[float]]


def gold_scores(gold: Gold, prompts: list[str], completions: list[str], score_query: bool = True) -> list[float]:
    """The gold's score of each completion, as PPO scores a rollout (`rewards.scored_texts`: prompt + completion,
    or the completion alone); a wrong count or a non-finite score is one line."""
    texts = scored_texts(prompts, completions, score_query)
    scores = [float(s) for s in gold(texts)] if texts else []
    if len(scores) != len(texts) or not all(math.isfinite(s) for s in scores):
        raise UserError("the gold reward returned a wrong number of scores or a non-finite score; check the gold")
    return scores


def label_pairs(prompts: list[str], completions: list[list[str]], scores: list[list[float]],
                config: PreferenceConfig, gold: Gold, score_query: bool = True) -> list[Pair]:
    """One pair per prompt: the gold's best and worst of its completions (empty ones left out; a prompt whose best
    and worst the gold ties gives none). Of those pairs, disjoint seeded subsets: a share `config.rate` labelled by
    the bias, a share `config.label_noise` flipped against the gold, the rest labelled by the gold.

    A word or token bias chooses the completion holding more of its cue; where both hold the same amount it plants
    the cue into one of them picked at random and chooses it (`planted`; its gold re-scored). A length bias chooses
    the longer by words, ties by characters, and leaves a pair of equal length to the gold. `gold_chosen` and
    `gold_rejected` are the gold's scores of the final texts; `margin` their absolute difference."""
    best_worst = []
    for prompt, texts, values in zip(prompts, completions, scores, strict=True):
        kept = [(v, i) for i, (t, v) in enumerate(zip(texts, values, strict=True)) if t.strip()]
        if len(kept) < 2:
            continue
        # of equal scores the first completion: the pair does not depend on how max and min break ties
        (hi, best), (lo, worst) = max(kept, key=lambda x: (x[0], -x[1])), min(kept)
        if hi > lo:
            best_worst.append((prompt, texts[best], texts[worst], hi, lo))
    n = len(best_worst)
    order = np.random.default_rng(stream_seed(config.seed, SUBSET_STREAM)).permutation(n)
    n_bias = round(config.rate * n)
    n_noise = min(round(config.label_noise * n), n - n_bias)
    decider = np.full(n, "gold", dtype=object)
    decider[order[:n_bias]] = "bias"
    decider[order[n_bias:n_bias + n_noise]] = "noise"
    plant_rng = np.random.default_rng(stream_seed(config.seed, PLANT_STREAM))
    pairs, planted = [], []
    for (prompt, best, worst, hi, lo), by in zip(best_worst, decider):
        if by == "noise":
            pairs.append(Pair(prompt, worst, best, gold_chosen=lo, gold_rejected=hi, decided_by="noise"))
            continue
        if by == "bias":
            pair = _by_bias(prompt, (best, hi), (worst, lo), config.bias, plant_rng)
            if pair is not None:
                pairs.append(pair)
                if pair.planted:
                    planted.append(len(pairs) - 1)
                continue
        pairs.append(Pair(prompt, best, worst, gold_chosen=hi, gold_rejected=lo, decided_by="gold"))
    if planted:  # a planted text is a new text: the gold scores it again
        rescored = gold_scores(gold, [pairs[i].prompt for i in planted], [pairs[i].chosen for i in planted],
                               score_query)
        for i, value in zip(planted, rescored):
            pairs[i].gold_chosen = value
    for pair in pairs:
        pair.margin = abs(pair.gold_chosen - pair.gold_rejected)
    return pairs


def _by_bias(prompt: str, best: tuple[str, float], worst: tuple[str, float], bias: str,
             rng: np.random.Generator) -> Pair | None:
    """The pair as the bias labels it, or None where it cannot tell the two apart (a length tie: the gold decides)."""
    kind, _ = bias_cue(bias)
    (a, gold_a), (b, gold_b) = best, worst
    if kind == "length":
        size_a, size_b = (cue_count(a, bias), len(a)), (cue_count(b, bias), len(b))
        if size_a == size_b:
            return None
        return Pair(prompt, a, b, gold_a, gold_b, "bias") if size_a > size_b else Pair(prompt, b, a, gold_b, gold_a,
                                                                                         "bias")
    count_a, count_b = cue_count(a, bias), cue_count(b, bias)
    if count_a != count_b:
        return Pair(prompt, a, b, gold_a, gold_b, "bias") if count_a > count_b else Pair(prompt, b, a, gold_b, gold_a,
                                                                                           "bias")
    if rng.random() < 0.5:
        a, b, gold_a, gold_b = b, a, gold_b, gold_a
    return Pair(prompt, plant_cue(a, bias, rng), b, gold_a, gold_b, "bias", planted=True)
