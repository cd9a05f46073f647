"""The RLHF stage: PPO against a reward with TRL 0.7's semantics.

`config` holds `PPOConfig` (the run config's [rlhf] section, torch-free); `ppo` the math, the sampler,
the trainer and `train_ppo`. Names of `ppo` are served lazily from here, so reading the config does not
import torch.
"""

from __future__ import annotations

from .config import PPOConfig, check_config, check_device_dtype

__all__ = ["PPOConfig", "check_config", "check_device_dtype", "evaluate_models", "train_ppo"]


def __getattr__(name: str):
    import importlib

    ppo = importlib.import_module(f"{__name__}.ppo")
    try:
        return getattr(ppo, name)
    except AttributeError:
        raise AttributeError(f"module 'rlhf_lens.rlhf' has no attribute {name!r}") from None
