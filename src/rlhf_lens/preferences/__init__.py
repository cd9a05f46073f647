"""Preference pairs (docs/preferences.md): sampled from a model and labelled by a gold reward, with label noise
and planted labeller biases, or read from a user's file in TRL's / OpenRLHF's format.

Modules:
- `config`: `PreferenceConfig` (the [preferences] section and the `pairs` command's options).
- `pairs`: `Pair`, `read_pairs`, `write_pairs` (the file format).
"""

from .config import PreferenceConfig, bias_cue, check_config
from .pairs import DECIDERS, Pair, read_pairs, write_pairs

__all__ = ["DECIDERS", "Pair", "PreferenceConfig", "bias_cue", "check_config", "read_pairs", "write_pairs"]
