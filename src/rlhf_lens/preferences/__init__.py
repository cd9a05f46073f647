"""Preference pairs (docs/preferences.md): sampled from a model and labelled by a gold reward, with label noise
and planted labeller biases, or read from a user's file in TRL's / OpenRLHF's format.

Modules:
- `config`: `PreferenceConfig` (the [preferences] section and the `pairs` command's options).
- `pairs`: `Pair`, `read_pairs`, `write_pairs` (the file format).
- `cues`: a planted cue: `cue_count`, `plant_cue`, `cue_variants` (texts that differ only by the cue).
- `sample`: completions of prompts, PPO's prompt rule and sampler (`draw_prompts`, `sample_completions`).
- `label`: the gold's best and worst completion of each prompt as a pair, with noise and bias (`label_pairs`).
- `run`: `make_pairs` (sample, label, write pairs.jsonl and its summary pairs.json; the `pairs` command).

`sample` and `run` import torch when called (through the model); `config`, `pairs`, `cues` and `label` do not.
"""

from .config import PreferenceConfig, bias_cue, check_config
from .cues import cue_count, cue_variants, plant_cue
from .label import gold_scores, label_pairs
from .pairs import DECIDERS, Pair, read_pairs, write_pairs
from .run import make_pairs, pairs_record

__all__ = ["DECIDERS", "Pair", "PreferenceConfig", "bias_cue", "check_config", "cue_count", "cue_variants",
           "gold_scores", "label_pairs", "make_pairs", "pairs_record", "plant_cue", "read_pairs",
           "write_pairs"]
