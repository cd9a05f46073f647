"""Rewards: a reward is a callable `texts -> list[float]`, one number per text (docs/rewards.md).

A reward spec is `KIND[:ARG][,key=value...]`:

- `vader`, `table:FILE`: a utility table U (word -> value); reward = clip(sum of U(w) over
  `words(text)` / scale, -clip, +clip), scale 5 and clip 10 by default (the paper's).
  Options: `scale=S`, `clip=C` (or `clip=none`).
- `classifier:MODEL`: the logit of one class of a Hugging Face sequence classifier, with its own
  tokenizer, truncated to its maximum length. Options: `index=N` (default 1) or `label=NAME`,
  `batch_size=N`.
- `rm:PATH`: a scalar reward model (any saved `AutoModelForSequenceClassification` with one label: ours from
  `rlhf-lens train-rm`, TRL's RewardTrainer's, OpenRLHF's); the reward is its logit, texts cut on the left.
  PATH is the model folder or train-rm's output folder (its `model/`). Options: `batch_size=N`. Bare `rm` is a
  run's own reward model, resolved to `rm:PATH` by the run.
- `sentiment[:CORPUS]`: an offline logistic regression on word 1- and 2-grams, fitted on a
  labelled corpus (default `pang-lee-sentences`) and cached; the reward is its logit (log-odds
  of positive).

Modules:
- `tables`: `words` (the one tokenisation), reading utility tables (VADER, CSV/TSV/JSON), `UtilityTableReward`.
- `classifiers`: `SequenceClassifier` (the one loader of a saved sequence classifier, batched), `ClassifierReward`
  and the offline `SentimentReward` (fit, cache).
- `reward_model`: `RewardModelReward` (`rm:PATH`).
- `spec`: the `Reward` protocol, `parse_spec` and `load_reward` (spec -> reward).
- `trainers`: what other trainers need: `scored_texts`, `reward_name`, `trl_reward_func` (TRL's `reward_funcs`).
- `placebo`: the placebo tune's table, `shuffled_table` and `write_table` (a control, not a reward of its own).

A new kind of reward goes in a module of its own (or beside its kin in `tables`/`classifiers`), with its
kind and options added to `spec`. Every public name is importable from here: `from rlhf_lens.rewards import X`.
"""

from .classifiers import (
    SENTIMENT_C,
    SENTIMENT_CORPUS,
    SENTIMENT_FORMAT,
    SENTIMENT_MIN_COUNT,
    SENTIMENT_TEST_FRACTION,
    SENTIMENT_VERSION,
    ClassifierReward,
    SentimentReward,
    SequenceClassifier,
)
from .placebo import shuffled_table, write_table
from .reward_model import RM_RECORD, RewardModelReward
from .spec import SPEC_HELP, Reward, load_reward, parse_spec
from .tables import (
    DEFAULT_CLIP,
    DEFAULT_SCALE,
    UtilityTableReward,
    load_utility_table,
    special_entries,
    vader_lexicon_path,
    words,
)
from .trainers import TrlRewardFunc, reward_name, scored_texts, trl_reward_func

__all__ = [
    "DEFAULT_CLIP", "DEFAULT_SCALE", "RM_RECORD", "SENTIMENT_C", "SENTIMENT_CORPUS", "SENTIMENT_FORMAT",
    "SENTIMENT_MIN_COUNT", "SENTIMENT_TEST_FRACTION", "SENTIMENT_VERSION", "SPEC_HELP", "ClassifierReward", "Reward",
    "RewardModelReward", "SentimentReward", "SequenceClassifier", "TrlRewardFunc", "UtilityTableReward",
    "load_reward", "load_utility_table", "parse_spec", "reward_name", "scored_texts", "shuffled_table",
    "special_entries", "trl_reward_func", "vader_lexicon_path", "words", "write_table",
]
