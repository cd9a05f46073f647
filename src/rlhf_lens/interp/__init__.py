"""Feature explanations, simulation scores and the utility score of the reward (docs/interp.md).

Examples come from an activation store (examples.py); explainers and simulators sit behind one
interface (explainers.py: offline, openai, hf:MODEL); explanations are scored by Pearson
correlation (scoring.py) and, with a scorer model's P(yes), by detection and fuzzing AUROC (detection.py,
fuzzing.py, scorers.py: each against other features' explanations, pooled by `scorer_summary`); utility.py scores how much of a utility table the features carry;
features.py is a run's features stage (one model's features explained, the shared explainer);
config.py holds the stage's settings ([interp], [interp.llm] and [examples] of a run config) and their rules.
"""

from __future__ import annotations

import importlib

from .config import ExampleConfig, InterpConfig, LLMConfig

# Served lazily (module __getattr__), so reading the settings above does not import torch.
_WHERE = {
    "ExampleSet": "examples", "FeatureExamples": "examples", "Record": "examples", "collect_examples": "examples",
    "normalise": "examples", "explain_features": "explain", "Capabilities": "explainers", "Explainer": "explainers",
    "get_explainer": "explainers", "pearson": "scoring", "simulation_score": "scoring",
    "annotate": "utility", "explanation_utility": "utility", "format_table": "utility", "reward_alignment": "utility",
    "utility_scores": "utility", "auroc": "scorers", "choose_null_explanations": "scorers",
    "score_explanations": "scorers", "scorer_summary": "scorers", "simulation_null": "scorers",
    "detection_messages": "detection", "fuzzing_messages": "fuzzing",
}

__all__ = [
    "Capabilities", "ExampleConfig", "ExampleSet", "Explainer", "FeatureExamples", "InterpConfig", "LLMConfig",
    "Record",
    "annotate", "auroc", "choose_null_explanations", "collect_examples", "detection_messages", "explain_features",
    "explanation_utility", "format_table", "fuzzing_messages", "get_explainer", "normalise", "pearson", "reward_alignment", "score_explanations", "scorer_summary",
    "simulation_null", "simulation_score", "utility_scores",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'rlhf_lens.interp' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
