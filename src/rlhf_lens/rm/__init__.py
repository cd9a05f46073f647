"""Bradley-Terry reward models trained on preference pairs (docs/rm.md), saved as Hugging Face
`AutoModelForSequenceClassification` with one label (what TRL's `RewardTrainer` saves).

Modules:
- `config`: `RMConfig` (the [rm] section and the `train-rm` command's options).
- `model`: load an RM (`load_reward_model`), the state its head reads (`last_token_states`), scores.
- `train`: the Bradley-Terry loss and the three modes (head, blocks, full): `train_rm`.
- `evaluate`: held-out accuracy against the labels and the gold, and the preference for a planted cue.
- `run`: `train_reward_model` (pairs -> out/model, out/rm.json, the placebo RM).

Only `config` is imported here: torch loads with the other modules, on first use.
"""

from .config import TRAIN_MODES, RMConfig, check_config

__all__ = ["RMConfig", "TRAIN_MODES", "check_config", "last_token_states", "load_reward_model", "score_head",
           "scores", "train_reward_model"]


def __getattr__(name: str):
    if name in ("last_token_states", "load_reward_model", "score_head", "scores"):
        from . import model

        return getattr(model, name)
    if name == "train_reward_model":
        from .run import train_reward_model

        return train_reward_model
    raise AttributeError(name)
