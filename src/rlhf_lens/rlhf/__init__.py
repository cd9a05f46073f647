"""The RLHF stage: PPO against a reward with TRL 0.7's semantics (docs/rlhf.md).

- `config`: `PPOConfig` (the run config's [rlhf] section) and its checks; torch-free.
- `ppo`: the PPO math, small pure functions checked against the equations: masked statistics and
  `whiten`, `kl_rewards`, `full_kl`, `gae`, `ppo_loss`, `KLController`, `lr_factor`, the `ValueHead`.
- `rollouts`: sampling responses with the KV cache (`sample`, `Rollouts`, `filter_logits`),
  log-probabilities of given responses (`response_forward`, `token_logprobs`), scoring, seeded streams.
- `trainer`: `_Trainer`, one run's state, its PPO step and its checkpoint (save, load to resume).
- `evals`: `evaluate_reward` (held-out completions scored by the reward, a gold, and their KL to the base),
  the rows of evals.jsonl (`eval_row`), `repetition` (distinct-2, the most frequent word's share).
- `gold`: `gold_curve` (proxy and gold against sqrt(KL), Gao et al.'s fit, the overoptimisation point with a
  bootstrap over prompts) and `write_gold` (gold.json, gold.png); numpy only.
- `run`: `train_ppo` (a resumable run into a folder, evaluated along the tune), `evaluate_models` (held-out reward
  of base and a model tuned elsewhere), `load_gold`, `plot_log`.

A new piece of the objective goes to `ppo`, a new way to sample to `rollouts`, a new entry point to `run`.
Every name of those modules is served lazily from here (`from rlhf_lens.rlhf import train_ppo`), so
reading the config does not import torch.
"""

from __future__ import annotations

from .config import PPOConfig, check_config, check_device_dtype

__all__ = ["PPOConfig", "check_config", "check_device_dtype", "evaluate_models", "train_ppo"]

_MODULES = ("ppo", "rollouts", "trainer", "evals", "gold", "run")
_MISSING = object()


def __getattr__(name: str):
    import importlib

    for module in _MODULES:
        found = getattr(importlib.import_module(f"{__name__}.{module}"), name, _MISSING)
        if found is not _MISSING:
            return found
    raise AttributeError(f"module 'rlhf_lens.rlhf' has no attribute {name!r}")
