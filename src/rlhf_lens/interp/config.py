"""Settings of the features stage (torch-free: the run config and the CLI read them at load)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InterpConfig:
    """The features stage: which features are explained, by what, and what counts as new (the run's [interp])."""

    top_k: int = 10
    """Features explained per model and block: the small dictionary's top-k by max cosine (paper: 10)."""
    explainer: str = "offline"
    """Explainer: offline, openai, or hf:MODEL."""
    base_url: str = ""
    """Base URL of an OpenAI-compatible API (explainer = openai)."""
    llm_model: str = "gpt-4"
    """Model name for the openai explainer."""
    new_feature_threshold: float = 0.0
    """A tuned feature is new when its max cosine to every base seed's small dictionary (same block) is below
    this. 0: auto, per block the new_feature_quantile of the base model's own seed-0-vs-other-seeds max
    cosines (what seed noise alone gives); with one SAE seed there is no such null and 0.5 is used."""
    new_feature_quantile: float = 0.05
    """Auto threshold (new_feature_threshold = 0): this quantile of the base seed-vs-seed max cosines, i.e.
    about this share of base features would count as new against the other base seeds."""


@dataclass
class ExampleConfig:
    n_top: int = 5
    """Top-activating documents shown to the explainer (paper: 5)."""
    n_holdout: int = 5
    """The next top-activating documents, held out to score the explanation."""
    n_random: int = 5
    """Random documents (seeded) also used to score the explanation."""
    max_tokens: int = 50
    """Only the first this many tokens of a document are ranked, shown and scored (paper: 50)."""
    seed: int = 0
    """Seed for the random documents."""
    batch_size: int = 4096
    """Rows encoded by an SAE at once."""
