"""Harvest MLP activations of chosen blocks over a corpus split into an activation store (docs/store.md).

`config` holds the settings (torch-free: `HarvestSettings` is the run config's [harvest] section,
`HarvestConfig` one harvest); `run` the harvester (`harvest`) and what a store records of its inputs
(`model_fingerprint`, `texts_fingerprint`, `local_or_name`); `cache` the harvest of one block that the
`explain` command keeps in the user cache (`cached_harvest`). Names of `run` and `cache` are served lazily
from here, so reading the settings does not import torch.
"""

from __future__ import annotations

import importlib

from .config import HarvestConfig, HarvestSettings

__all__ = ["HarvestConfig", "HarvestSettings", "cached_harvest", "harvest", "local_or_name", "model_fingerprint",
           "texts_fingerprint"]

_LAZY = {"cached_harvest": ".cache", "harvest": ".run", "local_or_name": ".run", "model_fingerprint": ".run",
         "texts_fingerprint": ".run"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'rlhf_lens.harvest' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
