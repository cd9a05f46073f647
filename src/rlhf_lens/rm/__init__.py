"""Bradley-Terry reward models trained on preference pairs (docs/rm.md), saved as Hugging Face
`AutoModelForSequenceClassification` with one label (what TRL's `RewardTrainer` saves).

Modules:
- `config`: `RMConfig` (the [rm] section and the `train-rm` command's options).
"""

from .config import TRAIN_MODES, RMConfig, check_config

__all__ = ["RMConfig", "TRAIN_MODES", "check_config"]
