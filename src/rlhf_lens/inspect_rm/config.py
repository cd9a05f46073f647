"""`InspectRMConfig`: how a reward model is opened (`rlhf-lens inspect-rm`, a run's [inspect_rm]; torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rules import Namer, field_name, number, require, seed


@dataclass
class InspectRMConfig:
    templates: list[str] = field(default_factory=lambda: ["The movie was", "In one word, I found it"])
    """Token scan: neutral openings each candidate word completes as the text's last token (the RM reads it there, as
    Christian et al. score one-token responses); a word's scan score is its z-score over the candidates, averaged."""
    shortlist: int = 20
    """Token scan: the words the scan rewards most that the gold does not value (gold <= 0), tested by insertion."""
    pair_words: int = 10
    """Token scan: also tested, the words most over-represented in chosen over rejected completions of the pairs
    (what a labeller's flaw leaves in the data)."""
    random_words: int = 30
    """The insertion test's null: random candidate words the gold values at 0, inserted the same way."""
    insertion_texts: int = 32
    """Held-out completions (the RM's test pairs) each tested word is inserted into, once each at a seeded place."""
    max_texts: int = 1024
    """Pair texts (prompt + chosen, prompt + rejected; a seeded subset) the RM's SAE trains on, beside the policy's
    held-out completions."""
    max_length: int = 128
    """Longest text (tokens) read; longer ones are cut on the left, as the RM reads them."""
    dict_ratio: int = 2
    """The RM's SAE: dictionary size = dict_ratio x the RM's width."""
    k: int = 32
    """The RM's SAE: BatchTopK's active codes per token (on average)."""
    sae_max_tokens: int = 2_000_000
    """The RM's SAE trains until converged on held-out rows, at most this many tokens."""
    null_shuffles: int = 20
    """The features' tests rerun on their nulls this many times (the gold shuffled over the texts; each pair's sides
    swapped at random): how many features they name where nothing is real, reported beside the real counts."""
    level: float = 0.05
    """False-positive rate of each "beyond the null" verdict (Holm over the tested words; Benjamini-Hochberg over the
    features' gold alignment and margin)."""
    top_features: int = 10
    """Features listed (by contribution to the policy's gain); the first `explain` are explained and scored."""
    explain: int = 5
    """Top gain features explained and scored like the policy's features ([interp], [examples])."""
    probe: bool = True
    """The feedback probe: the policy's SAE features (tuned and base dictionaries at the analysed blocks) predicting
    the RM's reward of a text, cross-validated by prompt."""
    probe_texts: int = 128
    """Texts the feedback probe reads (a seeded subset of the pair texts and the policy's completions)."""
    probe_folds: int = 5
    """Cross-validation folds of the feedback probe (grouped by prompt: no prompt in both training and test)."""
    seed: int = 0
    """Seed of text subsets, insertion places, random words, the null shuffles, the SAE and the probe's folds."""


def check_config(config: InspectRMConfig, key: Namer = field_name) -> None:
    """Every setting in range, or a UserError naming the first that is not."""
    c, k = config, key
    require([
        (bool(c.templates) and all(isinstance(t, str) and t.strip() for t in c.templates),
         f"{k('templates')} must list at least one non-empty opening (got {c.templates!r})"),
        number(c, "shortlist", k, at_least=0),
        number(c, "pair_words", k, at_least=0),
        number(c, "random_words", k, at_least=2),
        number(c, "insertion_texts", k, at_least=2),
        number(c, "max_texts", k, at_least=8),
        number(c, "max_length", k, at_least=8),
        number(c, "dict_ratio", k, at_least=1),
        number(c, "k", k, at_least=1),
        number(c, "sae_max_tokens", k, at_least=1),
        number(c, "null_shuffles", k, at_least=0),
        number(c, "level", k, above=0, below=1),
        number(c, "top_features", k, at_least=1),
        number(c, "explain", k, at_least=0),
        number(c, "probe_texts", k, at_least=8),
        number(c, "probe_folds", k, at_least=2),
        seed(c, "seed", k),
    ])
