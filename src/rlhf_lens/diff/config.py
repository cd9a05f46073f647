"""`DiffConfig`: the settings of a model diff (no torch here: the CLI reads it for `--help`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rules import Namer, field_name, is_finite_number, not_empty, number, one_of, require, seed

RANK_BY = ("kl", "logprob")
"""How promoted and demoted tokens are ranked (`DiffConfig.rank_by`)."""


@dataclass
class DiffConfig:
    split: str = "test"
    """Corpus split whose documents base and tuned are compared on."""
    max_docs: int = 48
    """Documents of that split to compare on (a seeded random subset of this many)."""
    max_tokens: int = 64
    """Truncate each document to this many tokens."""
    batch_size: int = 8
    """Documents per forward pass of the paired comparison."""
    text_column: str = "text"
    """Column holding the text in a .jsonl/.csv/.parquet corpus."""
    top_words: int = 30
    """Promoted and demoted tokens to list (and the size of each random token set of the null)."""
    whole_words: bool = True
    """Rank only tokens that start a word (a leading space, or a tokenizer without such pieces) and decode to one word."""
    rank_by: str = "kl"
    """How promoted/demoted tokens are ranked: kl (each token's share of KL(tuned||base), resp. KL(base||tuned): probability-weighted log-prob change) or logprob (mean log-prob change; rare tokens dominate it, and a mere change of temperature promotes every rare token)."""
    min_change: float = 1e-6
    """A token counts as promoted (demoted) only when its score (rank_by) exceeds this (nats)."""
    null_sets: int = 2000
    """Random token sets drawn for the null of the promoted words' mean utility."""
    verdict_z: float = 2.0
    """z score (against the null) from which a measure is called a change."""
    level: float = 0.05
    """False-positive rate of each "beyond the null" verdict: a claim needs its p-value (adjusted across blocks: Holm) at or below this (docs/calibration.md)."""
    table: str | None = None
    """Utility table to read words with (vader or a file); default: the reward's own table (vader, table:FILE)."""
    word_template: str = "It was {word}."
    """For a reward without a table (classifier, sentiment): a word's utility is reward(template) minus reward of the template with an empty word."""
    word_pool: int = 512
    """For a reward without a table: random candidate tokens scored as the null's pool (besides the listed ones)."""
    contexts: int = 5
    """Highest-KL contexts kept as examples."""
    context_tokens: int = 24
    """Tokens shown per context (ending just after the highest-KL position)."""
    prompts: int = 32
    """Held-out prompts for steering, from the split's documents the paired comparison did not read."""
    new_tokens: int = 16
    """Tokens sampled per prompt when steering."""
    alphas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    """Steering strengths α: base + α·Δ_L at each analysed block (0 is always added)."""
    random_directions: int = 19
    """Random directions per analysed block, seeded: the steering null (matched on the KL α·Δ_L causes, at the reported α; the rank p-value's floor is 1/(n + 1), before Holm across the analysed blocks) and the logit lens's null (of Δ_L's norm)."""
    coherence_kl: float = 1.0
    """An α is coherent while the steered model's mean per-token KL to the base, on its own samples, stays below this (nats)."""
    rank_layers: list[int] | None = None
    """Blocks of the causal ranking (default: rank_spread blocks spread over depth plus the analysed ones)."""
    rank_spread: int = 5
    """Blocks spread evenly over depth in the default causal ranking."""
    rank_alpha: float = 0.0
    """Unused: the causal ranking patches each block's parameters (no α); kept so configs that set it still load."""
    rank_random: int = 19
    """Random directions per ranked block, matched on the KL its parameter patch causes (its null; a claim about one of m ranked blocks needs at least 20m - 1 at level 0.05)."""
    save_activations: bool = False
    """Also save the residual stream of base and tuned at the analysed blocks as two activation stores (acts/base, acts/tuned)."""
    seed: int = 0
    """Seed of prompts, sampling, random directions and random token sets."""


def check_config(config: DiffConfig, key: Namer = field_name) -> None:
    """Every setting in range, or a UserError naming the first that is not (as `key` spells it). The blocks of
    `rank_layers` are checked against the model's depth where the model is known (`diff_models`, a run's input
    checks)."""
    c, k = config, key
    require([
        not_empty(c, "split", k, "a split of the corpus, e.g. test"),
        number(c, "max_docs", k, at_least=1),
        number(c, "max_tokens", k, at_least=2),
        number(c, "batch_size", k, at_least=1),
        not_empty(c, "text_column", k, "the column holding the text, e.g. text"),
        number(c, "top_words", k, at_least=1),
        one_of(c, "rank_by", k, RANK_BY),
        number(c, "min_change", k, at_least=0),
        number(c, "null_sets", k, at_least=10),
        number(c, "verdict_z", k, above=0),
        number(c, "level", k, above=0, below=1),
        (c.table is None or c.table.strip() != "",
         f"{k('table')} is empty; give vader or a table file, or leave it unset (the reward's own table)"),
        (_fills(c.word_template), f"{k('word_template')} must contain {{word}} and no other {{...}} field "
                                  f"(got {c.word_template!r})"),
        number(c, "word_pool", k, at_least=10),
        number(c, "contexts", k, at_least=0),
        number(c, "context_tokens", k, at_least=1),
        number(c, "prompts", k, at_least=2),
        number(c, "new_tokens", k, at_least=1),
        (bool(c.alphas) and all(is_finite_number(a) and a >= 0 for a in c.alphas),
         f"{k('alphas')} must be at least one finite number >= 0 (got {c.alphas})"),
        number(c, "random_directions", k, at_least=1),
        number(c, "coherence_kl", k, above=0),
        (c.rank_layers is None or (bool(c.rank_layers) and all(b >= 0 for b in c.rank_layers)),
         f"{k('rank_layers')} must be blocks >= 0 (0-based), at least one, or unset for the default "
         f"(got {c.rank_layers})"),
        number(c, "rank_spread", k, at_least=0),
        number(c, "rank_alpha", k, at_least=0, note="0: the reported α"),
        number(c, "rank_random", k, at_least=0),
        seed(c, "seed", k),
    ])


def _fills(template: str) -> bool:
    """Whether `template` has a {word} field and no other field (`str.format(word=...)` fills it)."""
    try:
        return "{word}" in template and template.format(word="") is not None
    except (KeyError, IndexError, ValueError):
        return False
