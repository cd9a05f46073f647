"""Prompts for LLM explainers and simulators, after Bills et al. (2023), and the strict answer parser.

Explanation: the top records as "token<TAB>activation" lines (activations 0..10), one
sentence back. Simulation: the explanation and one record's tokens, one line per token
back ("token<TAB>activation", all tokens at once). Tokens are shown by `text.show_token`
(newlines and tabs escaped), so every token is exactly one line.
"""

from __future__ import annotations

import re

from ..errors import UserError
from .text import show_token

EXPLAIN_SYSTEM = (
    "We are studying features of a sparse autoencoder trained on the activations of a language model. "
    "Each feature responds to some particular pattern in short texts. You will see texts written one token "
    "per line; after each token comes a tab and the feature's activation on that token, an integer from "
    "0 (silent) to 10 (its strongest response). Look at where the feature is active and say in a single "
    "sentence what it responds to. Do not list every token."
)

SIMULATE_SYSTEM = (
    "We are studying features of a sparse autoencoder trained on the activations of a language model. "
    "Given an explanation of what a feature responds to, predict the feature's activation on every token "
    "of a text, as an integer from 0 (silent) to 10 (its strongest response). Answer with exactly one line "
    "per token, in the order given; each line is the token exactly as shown, a tab, and the integer. "
    "Write nothing else."
)

_VALUE = re.compile(r"^(10|[0-9])$")
_MARKERS = {"<start>", "<end>"}


def explanation_messages(name: str, tokens: list[list[str]], activations: list[list[int]]) -> list[dict]:
    """Chat messages asking for a one-sentence explanation of feature `name` from its top records."""
    parts = [f"Feature {name}"]
    for i, (toks, acts) in enumerate(zip(tokens, activations), 1):
        lines = "\n".join(f"{show_token(t)}\t{a}" for t, a in zip(toks, acts))
        parts.append(f"Text {i}:\n<start>\n{lines}\n<end>")
    parts.append(f"In one sentence, what does feature {name} respond to?")
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def simulation_messages(explanation: str, tokens: list[str]) -> list[dict]:
    """Chat messages asking for the activation of every token of one record, given an explanation."""
    lines = "\n".join(show_token(t) for t in tokens)
    user = f"Explanation of the feature: {explanation}\n\nTokens:\n<start>\n{lines}\n<end>"
    return [{"role": "system", "content": SIMULATE_SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(answer: str) -> str:
    """The first non-empty line of an answer, without surrounding quotes; an empty answer is an error."""
    for line in answer.strip().splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return line
    raise UserError("the explainer returned an empty explanation; rerun, or use a stronger explainer model")


def parse_simulation(answer: str, tokens: list[str]) -> list[int]:
    """Strictly parse "token<TAB>activation" lines: one per token, same tokens in order, integers 0..10.

    Tolerated: blank lines, a ``` fence, <start>/<end> lines, and whitespace around a token.
    Anything else raises `UserError` naming the first offending line.
    """
    lines = [line for line in answer.strip().splitlines()
             if line.strip() and not line.strip().startswith("```") and line.strip() not in _MARKERS]
    hint = "the simulator did not follow the format; rerun, use a stronger explainer model, or --explainer offline"
    if len(lines) != len(tokens):
        raise UserError(f"malformed simulator answer: {len(lines)} lines for {len(tokens)} tokens; {hint}")
    values: list[int] = []
    for n, (line, token) in enumerate(zip(lines, tokens), 1):
        shown = show_token(token).strip()
        if "\t" not in line:
            raise UserError(f"malformed simulator answer: line {n} {line[:60]!r} has no tab; {hint}")
        got, value = line.rsplit("\t", 1)
        if got.strip() != shown:
            raise UserError(f"malformed simulator answer: line {n} is for token {got.strip()[:40]!r}, "
                            f"expected {shown[:40]!r}; {hint}")
        if not _VALUE.match(value.strip()):
            raise UserError(f"malformed simulator answer: line {n} value {value.strip()[:20]!r} is not an integer "
                            f"0..10; {hint}")
        values.append(int(value.strip()))
    return values
