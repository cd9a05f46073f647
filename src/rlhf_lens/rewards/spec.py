"""Reward specs: `KIND[:ARG][,key=value...]` parsed (`parse_spec`) and built (`load_reward`) into a `Reward`."""

from __future__ import annotations

import math
import re
from typing import Protocol

from ..errors import UserError
from .classifiers import SENTIMENT_CORPUS, ClassifierReward, SentimentReward
from .reward_model import RewardModelReward
from .tables import DEFAULT_CLIP, DEFAULT_SCALE, UtilityTableReward, load_utility_table

SPEC_HELP = "use vader, table:FILE, classifier:MODEL, rm:PATH, sentiment or sentiment:CORPUS"


class Reward(Protocol):
    def __call__(self, texts: list[str]) -> list[float]: ...


_OPTIONS = {"vader": {"scale", "clip"}, "table": {"scale", "clip"}, "classifier": {"index", "label", "batch_size"},
            "rm": {"batch_size"}, "sentiment": set()}
# `rm` alone (no path) is a run's own reward model (reward.spec = rm: trained from [preferences] and [rm]); the run
# resolves it to rm:PATH before any reward is loaded.


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """`KIND[:ARG][,key=value...]` -> (kind, arg, options). Trailing `,key=value` parts are options."""
    parts = spec.split(",")
    options: dict[str, str] = {}
    while len(parts) > 1 and re.fullmatch(r"\s*\w+\s*=.*", parts[-1]):
        key, _, value = parts.pop().partition("=")
        options[key.strip()] = value.strip()
    head = ",".join(parts).strip()
    kind, _, arg = head.partition(":")
    if kind not in _OPTIONS or (kind == "vader" and arg) or (kind in ("table", "classifier") and not arg):
        raise UserError(f"unknown reward spec {spec!r}; {SPEC_HELP}")
    unknown = set(options) - _OPTIONS[kind]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
        raise UserError(f"reward {kind} has no option {', '.join(sorted(unknown))} (options: {allowed})")
    return kind, arg, options


def load_reward(spec: str, device: str = "cpu") -> Reward:
    """Build the reward a spec names (see the package doc). Rewards carry `.info` (a JSON-able dict)."""
    kind, arg, options = parse_spec(spec)
    if kind in ("vader", "table"):
        table = load_utility_table("vader" if kind == "vader" else arg)
        clip_text = options.get("clip", str(DEFAULT_CLIP))
        scale = _float_option(options.get("scale", str(DEFAULT_SCALE)), "scale")
        clip = None if clip_text.lower() == "none" else _float_option(clip_text, "clip")
        return UtilityTableReward(table, scale=scale, clip=clip, name="vader" if kind == "vader" else arg)
    if kind in ("classifier", "rm"):
        batch_size = int(_float_option(options.get("batch_size", "32"), "batch_size"))
        if batch_size < 1:
            raise UserError(f"{kind} batch_size must be at least 1 (got {batch_size})")
        if kind == "rm":
            return RewardModelReward(arg, batch_size=batch_size, device=device)
        if "index" in options and "label" in options:
            raise UserError("give the classifier's class as index=N or label=NAME, not both")
        index: int | str = options.get("label", options.get("index", "1"))
        return ClassifierReward(arg, index=index, batch_size=batch_size, device=device)
    return SentimentReward.fit(arg or SENTIMENT_CORPUS)


def _float_option(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"reward option {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"reward option {name}={text!r} is not finite")
    return value
