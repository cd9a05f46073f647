"""The sections of a run config that belong to no stage package: [model], [data], [reward], [divergence], [sae]
(the grid over `sae.config.SAETraining`), [controls] and [gold]. Each dataclass is its section; its field
docstrings are the help of `rlhf-lens run --keys` and of the commands that take them (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .interp.config import check_aggregate
from .rlhf.config import check_device_dtype
from .rules import Namer, field_name, not_empty, number, one_of, require, seed, seeds
from .sae.config import SAETraining


@dataclass
class ModelSection:
    base: str = "tiny"
    """Base model: a hub id, a local save_pretrained folder, `smollm2`, or `tiny` (built from [tiny])."""
    tuned: str = ""
    """An already tuned model to analyse instead of running PPO; empty: tune the base with [rlhf]."""
    device: str = "cpu"
    """Device for every stage: cpu or cuda."""
    dtype: str = "float32"
    """Model dtype for every stage (both models of a comparison always share it)."""
    seed: int = 0
    """Seed of the run (tiny model, control model, example sampling)."""

    def check(self, key: Namer = field_name) -> None:
        require([not_empty(self, "base", key, "a hub id, a folder, smollm2 or tiny"), seed(self, "seed", key)])
        check_device_dtype(self.device, self.dtype, key)


@dataclass
class DataSection:
    corpus: str = "pang-lee"
    """Corpus name (imdb, pang-lee, ...) or file: PPO prompts come from its train split (and are evaluated on test)."""
    text_column: str = "text"
    """Text column of a file corpus."""
    test_split: str = "test"
    """Split activations are harvested from (paper: IMDB test)."""

    def check(self, key: Namer = field_name) -> None:
        require([
            not_empty(self, "corpus", key, "a corpus name (pang-lee, imdb) or a file"),
            not_empty(self, "text_column", key, "the column holding the text, e.g. text"),
            not_empty(self, "test_split", key, "a split of the corpus, e.g. test"),
        ])


@dataclass
class RewardSection:
    spec: str = "vader"
    """Reward: vader, table:FILE (CSV/TSV/JSON word, value), classifier:MODEL (a sequence classifier), sentiment or
    sentiment:CORPUS (offline logistic regression); options as ,key=value (e.g. vader,scale=5,clip=10 or
    classifier:MODEL,index=1). See docs/rewards.md."""
    table: str = "vader"
    """Utility table the explanations are scored against: vader or a CSV/TSV/JSON word -> value file."""
    aggregate: str = "mean"
    """Per-explanation aggregate of the utilities of its words: mean (the authors' notebook) or sum."""

    def check(self, key: Namer = field_name) -> None:
        """Names only: the reward and the tables are loaded by the run's input checks."""
        require([
            not_empty(self, "spec", key, "a reward: vader, table:FILE, classifier:MODEL or sentiment"),
            not_empty(self, "table", key, "vader or a utility table file"),
        ])
        check_aggregate(self.aggregate, key)


@dataclass
class DivergenceSection:
    top_n: int = 5
    """How many of the most divergent blocks to analyse (paper: 5)."""
    rank: str = "parameters"
    """How the analysed blocks are chosen: parameters (the paper: most-moved parameters, Frobenius norm) or
    causal (the diff stage's ranking: reward gain of the base model with the tuned model's block in place of its own)."""

    def check(self, key: Namer = field_name) -> None:
        require([number(self, "top_n", key, at_least=1), one_of(self, "rank", key, ("parameters", "causal"))])


@dataclass
class SAESection(SAETraining):
    """The [sae] section: how every SAE of the run is trained (`sae.config.SAETraining`), and the grid."""

    dict_ratios: list[int] = field(default_factory=lambda: [1, 2])
    """Dictionary sizes as multiples of the MLP width; the first is the small one (paper: 1x and 2x)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One SAE pair per seed: MMCS and scores are reported as mean +- spread over seeds."""

    def check(self, key: Namer = field_name) -> None:
        """The training rules (the dictionary sizes are known once a model is loaded), then the grid's."""
        super().check(key)
        r = self.dict_ratios
        require([
            (all(x >= 1 for x in r), f"{key('dict_ratios')} must be whole multiples >= 1 (got {r})"),
            (len(r) >= 2 and len(set(r)) == len(r),
             f"{key('dict_ratios')} needs at least two distinct sizes (MMCS compares the small dictionary with a "
             f"larger one; with one size it is 1.0 by construction), got {r}"),
            seeds(self, "seeds", key),
        ])


@dataclass
class ControlSection:
    random_init: bool = False
    """Also analyse a randomly initialised model of the base architecture, as a control."""
    placebo: bool = False
    """PPO-tune placebos too: the reward's table (vader, table:FILE) shuffled over words, analysed like the tune."""
    placebo_seeds: list[int] = field(default_factory=lambda: [0])
    """One placebo per seed (own table permutation and PPO seed); >= 2 to test the change against their spread."""


@dataclass
class GoldSection:
    spec: str = ""
    """The gold reward: what the labellers meant (any reward spec: vader, sentiment, table:FILE, classifier:MODEL).
    It labels the sampled pairs of a run whose reward.spec = rm, and every PPO evaluation (rlhf.eval_every) scores
    the completions by it beside the reward. Empty: none."""

    def check(self, key: Namer = field_name) -> None:
        """The spec's form (the reward itself is loaded by the run's input checks)."""
        if self.spec:
            from .errors import UserError
            from .rewards import parse_spec

            try:
                kind, arg, _ = parse_spec(self.spec)
            except UserError as e:
                raise UserError(f"{key('spec')}: {e}") from None
            if kind == "rm" and not arg:
                raise UserError(f"{key('spec')} = rm names the run's own reward model, which cannot be its gold; "
                                "give a fixed reward (vader, sentiment, table:FILE, classifier:MODEL or rm:PATH)")
