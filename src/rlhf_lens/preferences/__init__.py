"""Preference pairs (docs/preferences.md): sampled from a model and labelled by a gold reward, with label noise
and planted labeller biases, or read from a user's file in TRL's / OpenRLHF's format.

Modules:
- `config`: `PreferenceConfig` (the [preferences] section and the `pairs` command's options).
- `pairs`: `Pair`, `read_pairs`, `write_pairs` (the file format).
- `cues`: a planted cue: `cue_count`, `plant_cue`, `cue_variants` (texts that differ only by the cue).
"""

from .config import PreferenceConfig, bias_cue, check_config
from .cues import cue_count, cue_variants, plant_cue
from .pairs import DECIDERS, Pair, read_pairs, write_pairs

__all__ = ["DECIDERS", "Pair", "PreferenceConfig", "bias_cue", "check_config", "cue_count", "cue_variants", "plant_cue", "read_pairs", "write_pairs"]
