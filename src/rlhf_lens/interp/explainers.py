"""Explainers and their simulators behind one interface.

An explainer turns a feature's top records (tokens with activations 0..10) into one
sentence; its simulator turns a sentence back into predicted activations on other
records. `get_explainer(spec)` gives:

- `offline`: no LLM. The explanation names the units (words or punctuation, see text.py)
  where the feature fires most relative to how common they are in the corpus, plus the
  unit that most often precedes them; the simulator predicts activation on the units the
  explanation quotes. Deterministic.
- `openai`: an OpenAI-compatible chat API (GPT-4 as in the paper, or a local server).
- `hf:MODEL`: a local Hugging Face causal LM (e.g. `hf:smollm2`), greedy decoding; its
  simulations are decoded under the answer's grammar, so they are always well formed.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from ..errors import UserError
from .config import LLMConfig, check_explainer
from .examples import CorpusStats
from .llm import ChatClient, LocalLM, hf_client, openai_client
from .prompts import explanation_messages, parse_explanation, parse_simulation, simulation_messages
from .text import show_token, token_keys, token_units


@dataclass(frozen=True)
class Capabilities:
    deterministic: bool
    """The same records always give the same explanation and simulation."""
    uses_llm: bool
    """Asks a language model (prompts in prompts.py)."""
    network: bool
    """Talks to a server (answers cached on disk)."""
    corpus_statistics: bool
    """Wants corpus unit frequencies (`CorpusStats`) to explain."""
    parallel: bool
    """Answers several requests at once."""


class Explainer:
    """Interface: explain features from their top records, simulate activations from an explanation."""

    name: str = ""
    capabilities: Capabilities

    def explain_many(self, features: list[tuple[str, list[list[str]], list[list[int]]]],
                     corpus: CorpusStats | None = None) -> list[str]:
        """One sentence per feature, from (label, tokens per record, activations 0..10 per record)."""
        raise NotImplementedError

    def simulate_many(self, jobs: list[tuple[str, list[list[str]]]]) -> list[list[list[float]]]:
        """Predicted activations (0..10) for every token of every record, per (explanation, records) job; a record
        whose simulation failed (an answer that could not be parsed, twice) is None."""
        raise NotImplementedError


# --- offline ---------------------------------------------------------------------------------

NAMES = 3
"""Units named in an offline explanation."""
MIN_SHOWN = 3
"""A unit is named only if it reaches this activation (of 10) somewhere in the shown records."""
BROAD = 0.5
"""Below this share of the activation mass on the named units, the explanation says it fires broadly."""
_AFTER = re.compile(r',\s*often (after|before) "([^"]+)"')
_QUOTED = re.compile(r'"([^"]+)"')
_STOPWORDS = frozenset(
    "a an the and or of to in on at by for with from as such like this that these those it its is are was be "
    "fires fire firing responds respond activates active feature features neuron token tokens word words text "
    "texts phrase phrases mentions mention related about often after before most mostly many broadly silent "
    "shown diffusely".split())


class OfflineExplainer(Explainer):
    name = "offline"
    capabilities = Capabilities(deterministic=True, uses_llm=False, network=False, corpus_statistics=True,
                                parallel=False)

    def explain_many(self, features, corpus=None):
        return [explain_offline(tokens, acts, corpus) for _, tokens, acts in features]

    def simulate_many(self, jobs):
        return [[simulate_offline(explanation, tokens) for tokens in records] for explanation, records in jobs]


def explain_offline(tokens: list[list[str]], activations: list[list[int]], corpus: CorpusStats | None) -> str:
    """`Fires on "x", "y" and "z", often after "w".` from the shown records (see the module docstring).

    Per unit occurrence the activation is the max over its tokens; a unit's score is the sum of its
    occurrences' activations times its inverse corpus frequency, log((N+1)/(count+1)) + 1.
    """
    mass: Counter = Counter()
    peak: dict[str, int] = defaultdict(int)
    occurrences: list[tuple[str, int, str, str]] = []  # key, activation, previous key, next key
    for toks, acts in zip(tokens, activations):
        index, units = token_units(toks)
        unit_act = [0] * len(units)
        for u, a in zip(index, acts):
            if u >= 0:
                unit_act[u] = max(unit_act[u], int(a))
        for u, unit in enumerate(units):
            a = unit_act[u]
            mass[unit.key] += a
            peak[unit.key] = max(peak[unit.key], a)
            if a > 0:
                before = units[u - 1].key if u > 0 else ""
                after = units[u + 1].key if u + 1 < len(units) else ""
                occurrences.append((unit.key, a, before, after))
    total = sum(mass.values())
    if total <= 0:
        return "Silent on the shown texts."

    def idf(key: str) -> float:
        return math.log(1.0 / corpus.frequency(key)) + 1.0 if corpus is not None else 1.0

    ranked = sorted((k for k in mass if peak[k] >= MIN_SHOWN and '"' not in k and k),
                    key=lambda k: (-mass[k] * idf(k), k))
    names = ranked[:NAMES]
    if not names:
        # No sentiment-bearing word here: the utility score reads every word of an explanation
        # ("weakly" is in VADER and gave every such feature 1.8).
        return "Fires diffusely on the shown texts."
    listed = ", ".join(f'"{n}"' for n in names[:-1]) + (" and " if len(names) > 1 else "") + f'"{names[-1]}"'
    share = sum(mass[n] for n in names) / total
    sentence = f"Fires on {listed}" if share >= BROAD else f"Fires broadly, most on {listed}"
    strong = [o for o in occurrences if o[0] in names and o[1] >= MIN_SHOWN]
    for slot, word in ((2, "after"), (3, "before")):
        context = Counter(o[slot] for o in strong if o[slot] and '"' not in o[slot] and o[slot] not in names)
        if context:
            key, count = min(context.items(), key=lambda kv: (-kv[1], kv[0]))
            if count >= 2 and count * 2 >= len(strong):
                sentence += f', often {word} "{key}"'
                break
    return sentence + "."


def simulate_offline(explanation: str, tokens: list[str]) -> list[float]:
    """Predict 0..10 per token: quoted units by rank (10, 8, 6, then 4), else content words of the sentence at 5."""
    body = _AFTER.sub("", explanation)
    quoted = [q.strip().lower() for q in _QUOTED.findall(body) if q.strip()]
    weights: dict[str, float] = {}
    if quoted:
        for rank, key in enumerate(quoted):
            weights.setdefault(key, float(max(4, 10 - 2 * rank)))
    else:
        from ..rewards import words

        for word in words(explanation):
            if word not in _STOPWORDS:
                weights.setdefault(word, 5.0)
    return [weights.get(key, 0.0) for key in token_keys(tokens)]


# --- LLM explainers ---------------------------------------------------------------------------


EXPLANATION_TOKENS = 100
"""Answer length asked for an explanation (one sentence)."""


def simulation_tokens(tokens: list[str]) -> int:
    """Answer length asked for a simulation: room for every "token<TAB>value" line."""
    return 40 + sum(4 + len(t) // 2 for t in tokens)


class LLMExplainer(Explainer):
    """Explain and simulate with chat prompts (prompts.py) through a cached `ChatClient`."""

    def __init__(self, name: str, client: ChatClient, capabilities: Capabilities):
        self.name = name
        self.client = client
        self.capabilities = capabilities

    def explain_many(self, features, corpus=None):
        batch = [explanation_messages(label, tokens, acts) for label, tokens, acts in features]
        answers = self.client.complete_many(batch, [EXPLANATION_TOKENS] * len(batch))
        return [parse_explanation(answer) for answer in answers]

    def simulate_many(self, jobs):
        batch = [(explanation, tokens) for explanation, records in jobs for tokens in records]
        messages = [simulation_messages(explanation, tokens) for explanation, tokens in batch]
        limits = [simulation_tokens(tokens) for _, tokens in batch]
        answers = self.client.complete_many(messages, limits)
        flat: list[list[float] | None] = []
        for (_, tokens), message, limit, answer in zip(batch, messages, limits, answers):
            try:
                values = parse_simulation(answer, tokens)
            except UserError:
                # one fresh try (the cached answer may be the bad one); a second bad answer is a failed
                # simulation: recorded and scored, never the end of the stage (one bad answer among thousands)
                self.client.forget(message, limit)
                answer = self.client.complete(message, refresh=True, max_tokens=limit)
                try:
                    values = parse_simulation(answer, tokens)
                except UserError:
                    self.client.forget(message, limit)
                    values = None
            flat.append(None if values is None else [float(v) for v in values])
        out, at = [], 0
        for _, records in jobs:
            out.append(flat[at:at + len(records)])
            at += len(records)
        return out


class HFExplainer(LLMExplainer):
    """A local LM: explanations by greedy generation; simulations by greedy decoding under the answer's
    grammar (the model picks each value among 0..10), so even a small model gives a well-formed answer."""

    def __init__(self, name: str, client: ChatClient, local: LocalLM):
        super().__init__(name, client, Capabilities(deterministic=True, uses_llm=True, network=False,
                                                    corpus_statistics=False, parallel=False))
        self.local = local

    def simulate_many(self, jobs):
        out = []
        for explanation, records in jobs:
            predictions = []
            for tokens in records:
                shown = [show_token(t) for t in tokens]
                answer = self.client.complete(simulation_messages(explanation, tokens), extra={"grammar": True},
                                              send=lambda messages, params, shown=shown:
                                              self.local.fill_values(messages, shown))
                predictions.append([float(v) for v in parse_simulation(answer, tokens)])
            out.append(predictions)
        return out


def get_explainer(spec: str, llm: LLMConfig | None = None, device: str = "cpu") -> Explainer:
    """`offline`, `openai` (configured by `llm`) or `hf:MODEL` (a local causal LM)."""
    check_explainer(spec)
    if spec == "offline":
        return OfflineExplainer()
    if spec == "openai":
        return LLMExplainer("openai", openai_client(llm or LLMConfig()),
                            Capabilities(deterministic=False, uses_llm=True, network=True, corpus_statistics=False,
                                         parallel=True))
    config = llm or LLMConfig()  # hf:MODEL
    local = LocalLM(spec[3:].strip(), device)
    return HFExplainer(spec, hf_client(local, config.max_tokens, config.cache), local)
