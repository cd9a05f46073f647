"""`rm:PATH`: a scalar reward model as a reward. Any saved `AutoModelForSequenceClassification` with one label (ours
from `rlhf-lens train-rm`, TRL's `RewardTrainer`, OpenRLHF's) reads a text and its one logit is the reward.

Loading and batching are `classifiers.SequenceClassifier`'s (shared with `classifier:MODEL`). Long texts are cut on
the LEFT: the completion, which the reward is about, sits at the end of prompt + completion. The text is scored as
given: TRL's RewardTrainer appends the eos token to each plain-text chosen and rejected before tokenizing, but when
the pad token is the eos (TRL's default when the tokenizer has none, and ours) the model pools at the last token that
is not a pad, so a trailing eos changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .classifiers import SequenceClassifier

RM_RECORD = "rm.json"
"""What `rlhf-lens train-rm --out DIR` writes beside DIR/model: the base, the pairs, the accuracies."""


def model_folder(path: str) -> Path | None:
    """The model folder a local `rm:PATH` names: PATH itself, or PATH/model for a `train-rm --out` folder;
    None for a name that is no local folder (a hub id)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        return folder / "model"
    return folder


def read_record(folder: Path) -> dict:
    """train-rm's rm.json beside the model folder (or in it), or {} when there is none or it does not parse."""
    for path in (folder.parent / RM_RECORD, folder / RM_RECORD):
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return {}
            return record if isinstance(record, dict) else {}
    return {}


class RewardModelReward:
    """The one logit of a scalar reward model (num_labels = 1) on each text, scored in batches."""

    def __init__(self, path: str, batch_size: int = 32, device: str = "cpu"):
        if not path:
            raise UserError("reward rm needs a path: rm:PATH (a saved reward model), or reward.spec = rm in a run "
                            "with [preferences] (the run trains its own)")
        folder = model_folder(path)
        if folder is None and path.startswith((".", "/", "~")):
            raise UserError(f"reward model {path} does not exist; give the folder of a saved reward model "
                            "(rlhf-lens train-rm --out DIR writes DIR/model)")
        if folder is not None and not (folder / "config.json").is_file():
            raise UserError(f"{path} holds no config.json: not a saved model; give the folder of a saved reward "
                            "model (rlhf-lens train-rm --out DIR writes DIR/model)")
        record = read_record(folder) if folder is not None else {}
        trained_length = (record.get("config") or {}).get("max_length") if isinstance(record.get("config"), dict) \
            else None
        self.scorer = SequenceClassifier(str(folder) if folder is not None else path, "reward model", device=device,
                                         batch_size=batch_size, truncation_side="left",
                                         max_length=trained_length if isinstance(trained_length, int) else None)
        if self.scorer.num_labels != 1:
            raise UserError(f"{path} has {self.scorer.num_labels} labels: a classifier; use classifier:{path}")
        self.max_length = self.scorer.max_length
        self.info = {"kind": "rm", "model": str(folder) if folder is not None else path,
                     "architecture": (self.scorer.architectures or ["unknown"])[0], "max_length": self.max_length,
                     "truncation": "left"}
        for key in ("base", "accuracy", "pairs"):
            if key in record:
                self.info[key] = record[key]

    def __call__(self, texts: list[str]) -> list[float]:
        return [row[0] for row in self.scorer.logits(texts)]
