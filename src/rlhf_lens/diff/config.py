"""`DiffConfig`: the settings of a model diff (no torch here: the CLI reads it for `--help`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rules import Namer, field_name, require


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
    random_directions: int = 4
    """Random directions of the same norm as Δ_L (the steering and lens null), seeded."""
    coherence_kl: float = 1.0
    """An α is coherent while the steered model's mean per-token KL to the base, on its own samples, stays below this (nats)."""
    rank_layers: list[int] | None = None
    """Blocks of the causal ranking (default: rank_spread blocks spread over depth plus the analysed ones)."""
    rank_spread: int = 5
    """Blocks spread evenly over depth in the default causal ranking."""
    rank_alpha: float = 0.0
    """α of the causal ranking (0: the reported α of the first analysed block)."""
    rank_random: int = 1
    """Random directions per ranked block (its null)."""
    save_activations: bool = False
    """Also save the residual stream of base and tuned at the analysed blocks as two activation stores (acts/base, acts/tuned)."""
    seed: int = 0
    """Seed of prompts, sampling, random directions and random token sets."""


def check_config(config: DiffConfig, key: Namer = field_name) -> None:
    """Every setting in range, or a UserError naming the first that is not (as `key` spells it)."""
    c, k = config, key
    require([
        (c.max_docs >= 1 and c.max_tokens >= 2 and c.batch_size >= 1,
         f"{k('max_docs')} and {k('batch_size')} must be >= 1 and {k('max_tokens')} >= 2"),
        (c.top_words >= 1 and c.null_sets >= 10, f"{k('top_words')} must be >= 1 and {k('null_sets')} >= 10"),
        (c.min_change >= 0 and c.verdict_z > 0, f"{k('min_change')} must be >= 0 and {k('verdict_z')} positive"),
        (c.prompts >= 2 and c.new_tokens >= 1, f"{k('prompts')} must be >= 2 and {k('new_tokens')} >= 1"),
        (bool(c.alphas) and all(a >= 0 for a in c.alphas), f"{k('alphas')} must be non-negative (got {c.alphas})"),
        (c.random_directions >= 1 and c.rank_random >= 0,
         f"{k('random_directions')} must be >= 1 and {k('rank_random')} >= 0"),
        (c.coherence_kl > 0, f"{k('coherence_kl')} must be positive (got {c.coherence_kl})"),
        (c.rank_spread >= 0 and c.rank_alpha >= 0, f"{k('rank_spread')} and {k('rank_alpha')} must be >= 0"),
        (c.contexts >= 0 and c.context_tokens >= 1 and c.word_pool >= 10,
         f"{k('contexts')} must be >= 0, {k('context_tokens')} >= 1 and {k('word_pool')} >= 10"),
        ("{word}" in c.word_template, f"{k('word_template')} must contain {{word}}"),
        (c.rank_by in ("kl", "logprob"), f"{k('rank_by')} must be kl or logprob (got {c.rank_by!r})"),
    ])
