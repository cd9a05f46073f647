"""Feature explanations, simulation scores and the utility score of the reward (docs/interp.md).

Examples come from an activation store (examples.py); explainers and simulators sit behind one
interface (explainers.py: offline, openai, hf:MODEL); explanations are scored by Pearson
correlation (scoring.py); utility.py scores how much of a utility table the features carry.
"""

from .examples import ExampleConfig, ExampleSet, FeatureExamples, Record, collect_examples, normalise
from .explain import explain_features
from .explainers import Capabilities, Explainer, get_explainer
from .llm import LLMConfig
from .scoring import pearson, simulation_score
from .utility import annotate, explanation_utility, format_table, reward_alignment, utility_scores

__all__ = [
    "Capabilities", "ExampleConfig", "ExampleSet", "Explainer", "FeatureExamples", "LLMConfig", "Record",
    "annotate", "collect_examples", "explain_features", "explanation_utility", "format_table", "get_explainer",
    "normalise", "pearson", "reward_alignment", "simulation_score", "utility_scores",
]
