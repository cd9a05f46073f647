"""Detection (Paulo et al. 2025): does a text contain what the explanation describes?

One context per prompt: the explanation, then a window of a document (its tokens joined), then a yes/no question.
The scorer model's answer is read as P(yes) / (P(yes) + P(no)) from its log-probabilities (answers.py), never
parsed from text. Positives are the feature's activating windows (one per activation bin, none shown to the
explainer), negatives its silent ones (samples.py); the score is the AUROC of P(yes) (0.5: chance, 1: every
activating text rated above every silent one).
"""

from __future__ import annotations

from .examples import FeatureExamples

SYSTEM = "Answer yes or no."
"""Kept short: a small local scorer pays for every prompt token (about 3 ms each on 2 CPU cores)."""
QUESTION = "Does this text contain what the explanation describes? Answer yes or no."


def detection_messages(explanation: str, text: str) -> list[dict]:
    """The chat prompt asking whether `text` contains what `explanation` describes."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\nText: {text}\n{QUESTION}"}]


def detection_cases(item: FeatureExamples, seed: int = 0) -> tuple[list[str], list[bool], dict]:
    """The texts scored for one feature, whether each is a positive, and the counts recorded
    (n_activating, n_silent). `seed` is unused (no random choice here; fuzzing's signature)."""
    texts = ["".join(r.tokens) for r in item.activating] + ["".join(r.tokens) for r in item.silent]
    labels = [True] * len(item.activating) + [False] * len(item.silent)
    return texts, labels, {"n_activating": len(item.activating), "n_silent": len(item.silent)}
