"""`PreferenceConfig`: how preference pairs are made (sampled and labelled by a gold reward) or read from a file
(torch-free: the run config and the `pairs` / `train-rm` commands read it without importing torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..rules import Namer, field_name, not_empty, number, require, seed

BIAS_KINDS = ("word", "token", "length")
BIAS_HELP = 'a planted labeller cue: "" (none), "word:W", "token:T" (e.g. token:!) or "length"'


@dataclass
class PreferenceConfig:
    file: str = ""
    """A file of preference pairs to read instead of sampling them (JSONL, CSV or Parquet with prompt, chosen and
    rejected columns; see prompt_key/chosen_key/rejected_key); empty: sample pairs and label them by gold.spec."""
    prompt_key: str = "prompt"
    """Column of the prompt in a pair file (OpenRLHF's --prompt_key)."""
    chosen_key: str = "chosen"
    """Column of the preferred completion in a pair file (OpenRLHF's --chosen_key)."""
    rejected_key: str = "rejected"
    """Column of the other completion in a pair file (OpenRLHF's --rejected_key)."""
    prompts: int = 512
    """Prompts sampled (train split, PPO's prompt rule); each gives at most one pair (none on a gold tie)."""
    completions: int = 2
    """Completions sampled per prompt (PPO's sampler and lengths); the pair is the gold's best and worst of them."""
    label_noise: float = 0.0
    """Share of the pairs (seeded) whose label is flipped: labellers who err at random."""
    bias: str = ""
    """A planted labeller cue: "" (none), "word:W" (prefers a completion holding the word W), "token:T" (the token
    T, e.g. token:!) or "length" (prefers the longer completion)."""
    rate: float = 0.0
    """Share of the pairs (seeded) whose label follows bias instead of the gold; a word or token cue absent from
    the pair is planted into the completion it decides for."""
    seed: int = 0
    """Seed of the prompts, the sampling, which pairs the noise and the bias decide, and where a cue is planted."""


def bias_cue(bias: str) -> tuple[str, str]:
    """`bias` -> (kind, cue): ("", "") for none, ("word", W), ("token", T) or ("length", "")."""
    if not bias:
        return "", ""
    kind, _, cue = bias.partition(":")
    return kind, cue


def check_config(config: PreferenceConfig, key: Namer = field_name) -> None:
    """Every setting in range, or a UserError naming the first that is not."""
    c, k = config, key
    kind, cue = bias_cue(c.bias)
    require([
        not_empty(c, "prompt_key", k, "the column holding the prompt, e.g. prompt"),
        not_empty(c, "chosen_key", k, "the column holding the preferred completion, e.g. chosen"),
        not_empty(c, "rejected_key", k, "the column holding the other completion, e.g. rejected"),
        (len({c.prompt_key, c.chosen_key, c.rejected_key}) == 3,
         f"{k('prompt_key')}, {k('chosen_key')} and {k('rejected_key')} must name three different columns"),
        number(c, "prompts", k, at_least=1),
        number(c, "completions", k, at_least=2, note="a pair needs two"),
        number(c, "label_noise", k, at_least=0, below=0.5, note="0.5 would make labels coin flips"),
        (kind in ("",) + BIAS_KINDS and (bool(cue) == (kind in ("word", "token"))),
         f"{k('bias')} must be {BIAS_HELP} (got {c.bias!r})"),
        (kind != "word" or re.fullmatch(r"[A-Za-z][A-Za-z'-]*", cue) is not None,
         f"{k('bias')}: word:W takes one word of letters (got {cue!r}); use token:T for other text"),
        number(c, "rate", k, at_least=0, at_most=1),
        seed(c, "seed", k),
    ])
    require([
        (not (c.rate > 0 and not kind), f"{k('rate')} is {c.rate:g} but {k('bias')} is empty; name the cue "
                                        f"(e.g. word:indeed) or set {k('rate')} = 0"),
        (not (kind and c.rate == 0), f"{k('bias')} is {c.bias!r} but {k('rate')} is 0; give the share of pairs it "
                                     f"decides (e.g. 0.3) or leave {k('bias')} empty"),
        (c.label_noise + c.rate <= 1, f"{k('label_noise')} + {k('rate')} must be at most 1 "
                                      f"(got {c.label_noise:g} + {c.rate:g})"),
    ])
