"""Harvest MLP activations of chosen blocks over a corpus split into an activation store (docs/store.md).

`config` holds the settings (torch-free: `HarvestSettings` is the run config's [harvest] section,
`HarvestConfig` one harvest); `run` the harvester (`harvest`, `model_fingerprint`). Names of `run` are
served lazily from here, so reading the settings does not import torch.
"""

from __future__ import annotations

import importlib

from .config import HarvestConfig, HarvestSettings

__all__ = ["HarvestConfig", "HarvestSettings", "harvest", "model_fingerprint"]


def __getattr__(name: str):
    run = importlib.import_module(f"{__name__}.run")
    try:
        return getattr(run, name)
    except AttributeError:
        raise AttributeError(f"module 'rlhf_lens.harvest' has no attribute {name!r}") from None
