"""Settings of the features stage (torch-free: the run config and the CLI read them at load): which features are
explained and by what (`InterpConfig`, the run's [interp], with the LLM back-end's `LLMConfig` as [interp.llm]),
the examples shown and scored (`ExampleConfig`, [examples]), and the rules of those fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rules import Namer, field_name, flag, nested, not_empty, number, require, seed

AGGREGATES = ("mean", "sum")
"""How the utility-table values of an explanation's words are aggregated (`utility.explanation_utility`)."""


def check_explainer(spec: str, key: Namer = field_name) -> None:
    require([(spec in ("offline", "openai") or (spec.startswith("hf:") and spec[3:].strip() != ""),
              f"unknown {key('explainer')} {spec!r}; use offline, openai, or hf:MODEL (e.g. hf:smollm2)")])


SCORERS = ("simulation", "detection", "fuzzing")
"""How an explanation is scored (docs/interp.md): simulation (Pearson of simulated vs true activations, Bills et al.),
detection and fuzzing (AUROC of a scorer model's P(yes), Paulo et al.)."""


def check_scorer_model(spec: str, key: Namer = field_name) -> None:
    require([(spec == "" or spec == "openai" or (spec.startswith("hf:") and spec[3:].strip() != ""),
              f"unknown {key('scorer_model')} {spec!r}; use hf:MODEL (a local LM, e.g. hf:smollm2), openai "
              "(interp.llm's server, which must return logprobs), or leave it empty for the default")])


def check_aggregate(aggregate: str, key: Namer = field_name) -> None:
    require([(aggregate in AGGREGATES, f"unknown {key('aggregate')} {aggregate!r}; use {' or '.join(AGGREGATES)}")])


@dataclass
class LLMConfig:
    """An LLM explainer's back-end: an OpenAI-compatible API (explainer openai) or a local LM (hf:MODEL)."""

    model: str = "gpt-4"
    """Model name sent to the API (e.g. gpt-4, or the name a local vLLM / llama.cpp / Ollama server serves)."""
    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible endpoint; requests go to BASE_URL/chat/completions (Ollama: http://127.0.0.1:11434/v1)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (local servers usually need none)."""
    temperature: float = 0.0
    """Sampling temperature (0: the most likely answer, as reproducible as the server allows)."""
    max_tokens: int = 800
    """Cap on an answer's length in tokens (an explanation asks for at most 100, a simulation about 5 per token shown)."""
    timeout: float = 120.0
    """Seconds to wait for one answer before retrying."""
    connect_timeout: float = 5.0
    """Seconds to wait for the server to accept a connection; a server that does not fails at once, without retries."""
    retries: int = 5
    """Retries after a read timeout, a dropped connection, HTTP 429 or 5xx (not after a failed connect)."""
    backoff: float = 2.0
    """Seconds before the first retry; doubled after each (a Retry-After header is honoured up to 60 s)."""
    concurrency: int = 4
    """Requests in flight at once."""
    cache: bool = True
    """Keep answers on disk and reuse them (keyed by model, prompt and params)."""

    def check(self, key: Namer = flag, api: bool = True) -> None:
        """Every field's rule; `api`: the explainer calls the OpenAI-compatible API (explainer openai), so
        base_url must be a URL (a local LM (hf:MODEL) reads only max_tokens and cache)."""
        require([
            not_empty(self, "model", key, "the model name the API serves, e.g. gpt-4"),
            (not api or self.base_url.startswith(("http://", "https://")),
             f"{key('base_url')} must start with http:// or https:// (got {self.base_url!r})"),
            not_empty(self, "api_key_env", key, "the environment variable holding the API key, e.g. OPENAI_API_KEY"),
            number(self, "temperature", key, at_least=0),
            number(self, "max_tokens", key, at_least=1),
            number(self, "timeout", key, above=0),
            number(self, "connect_timeout", key, above=0),
            number(self, "retries", key, at_least=0),
            number(self, "backoff", key, at_least=0),
            number(self, "concurrency", key, at_least=1),
        ])


@dataclass
class InterpConfig:
    """The features stage: which features are explained, by what, and what counts as new (the run's [interp])."""

    top_k: int = 10
    """Features explained per model and block: the small dictionary's top-k by max cosine (paper: 10)."""
    explainer: str = "offline"
    """Explainer: offline (no LLM), openai (an OpenAI-compatible API) or hf:MODEL (a local LM)."""
    llm: LLMConfig = field(default_factory=lambda: LLMConfig(base_url=""))
    """The LLM explainer's back-end; in a run explainer = openai needs llm.base_url (no default API)."""
    new_feature_threshold: float = 0.0
    """A tuned feature is new when its max cosine to every base seed's small dictionary (same block) is below
    this. 0: auto, per block the new_feature_quantile of the base model's own seed-0-vs-other-seeds max
    cosines (what seed noise alone gives); with one SAE seed there is no such null and 0.5 is used."""
    new_feature_quantile: float = 0.05
    """Auto threshold (new_feature_threshold = 0): this quantile of the base seed-vs-seed max cosines, i.e.
    about this share of base features would count as new against the other base seeds."""

    scorer: list[str] = field(default_factory=lambda: ["simulation"])
    """How explanations are scored, one or several of: simulation (the explainer's simulator; Pearson of simulated vs
    true activations, as the paper), detection (does a text contain what the explanation describes?) and fuzzing
    (are the marked tokens the ones it describes?). Detection and fuzzing read the scorer model's P(yes) from its
    log-probabilities and give an AUROC (0.5: chance). Every score comes with its null: the same examples scored
    with another feature's explanation."""
    scorer_model: str = ""
    """The model detection and fuzzing ask: hf:MODEL (a local LM; P(yes) from its logits) or openai (interp.llm's
    OpenAI-compatible server; P(yes) from its logprobs, which llama.cpp's and vLLM's servers return). Empty: the
    explainer's own model when it is an LLM, else hf:smollm2 (SmolLM2-135M-Instruct, installed offline)."""
    score_features: int = 0
    """Detection and fuzzing score this many features per model and block (the first ones explained, i.e. by max
    cosine; the first SAE seed only in a run); 0: every explained feature. Each feature costs about
    2 x (1 + null_explanations) x (n_activating + n_silent) prompts of ~90 tokens; SmolLM2-135M on 2 CPU cores
    answers a few a second (docs/interp.md has the measured cost)."""
    null_explanations: int = 1
    """Other features' explanations each feature's examples are also scored with (the shuffled-explanation null)."""
    reward_effect: bool = True
    """Read each explained feature through the reward's utility table by what it does to the output: VocabProj
    (its decoder row through the final norm and unembedding: the direct path) and TokenChange (the model steered
    by its decoder row at the diff's coherent strength, the tokens it promotes), each against frequency-matched
    random token sets (docs/interp.md)."""
    effect_match_kl: bool = False
    """TokenChange's strength. False: every decoder row steers at the norm of the diff's coherent α·Δ_L at its block
    (one forward pass per block; the KL each row causes is recorded). True: each row's norm is searched so it causes
    the KL that α·Δ_L causes (about 5 passes: fairer between rows, 5x the cost)."""
    output_top: int = 20
    """Tokens listed per feature by VocabProj and TokenChange (and the size of each random set of their null)."""

    def check(self, key: Namer = field_name) -> None:
        require([number(self, "top_k", key, at_least=1)])
        check_explainer(self.explainer, key)
        bad = [s for s in self.scorer if s not in SCORERS]
        require([
            (bool(self.scorer), f"{key('scorer')} is empty; name one or more of {', '.join(SCORERS)}"),
            (not bad, f"unknown {key('scorer')} {bad[0] if bad else ''!r}; use one or more of {', '.join(SCORERS)}"),
            (len(set(self.scorer)) == len(self.scorer), f"{key('scorer')} names a scorer twice"),
            number(self, "score_features", key, at_least=0, note="0: all"),
            number(self, "null_explanations", key, at_least=0),
            number(self, "output_top", key, at_least=1),
        ])
        check_scorer_model(self.scorer_model, key)
        asks_server = self.explainer == "openai" or (self.resolved_scorer_model() == "openai" and any(
            s in self.scorer for s in ("detection", "fuzzing")))
        self.llm.check(nested(key, "llm"), api=asks_server)
        require([
            number(self, "new_feature_threshold", key, at_least=0, at_most=1, note="0: auto"),
            number(self, "new_feature_quantile", key, above=0, below=1),
        ])

    def resolved_scorer_model(self) -> str:
        """interp.scorer_model, or its default: the explainer's model when it is an LLM, else hf:smollm2."""
        if self.scorer_model:
            return self.scorer_model
        return self.explainer if self.explainer != "offline" else "hf:smollm2"


@dataclass
class ExampleConfig:
    """The documents shown to an explainer and those its explanation is scored on (the run's [examples])."""

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
    n_activating: int = 10
    """Activating documents per feature for detection and fuzzing, none of them shown to the explainer: one from
    each of this many equal-count bins of a seeded sample of the documents it fires on, ranked by their maximum
    activation (10: one per decile)."""
    n_silent: int = 10
    """Documents where the feature is silent (its maximum is 0), for detection's negatives."""
    context_tokens: int = 32
    """Tokens of a document shown to detection and fuzzing: a window ending a few tokens after its peak."""

    def check(self, key: Namer = field_name) -> None:
        require([
            number(self, "n_top", key, at_least=1),
            number(self, "n_holdout", key, at_least=0),
            number(self, "n_random", key, at_least=0),
            number(self, "max_tokens", key, at_least=1),
            seed(self, "seed", key),
            number(self, "batch_size", key, at_least=1),
            number(self, "n_activating", key, at_least=1),
            number(self, "n_silent", key, at_least=1),
            number(self, "context_tokens", key, at_least=4),
            (self.n_holdout + self.n_random >= 1,
             f"{key('n_holdout')} + {key('n_random')} must be >= 1 (the simulation score needs held-out texts)"),
        ])
