"""What other trainers need: the texts a reward scores (`scored_texts`, our PPO's too), a reward's name, and the
reward as a TRL reward function (`trl_reward_func`, for GRPOTrainer's `reward_funcs`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from .spec import load_reward, parse_spec


def scored_texts(prompts: list[str], responses: list[str], score_query: bool = True) -> list[str]:
    """The texts a reward scores for (prompt, response) pairs: prompt + response concatenated as
    decoded text (the paper's, `PPOConfig.score_query`), or the response alone."""
    if len(prompts) != len(responses):
        raise UserError(f"{len(prompts)} prompts but {len(responses)} responses; give one prompt per response")
    return [p + r for p, r in zip(prompts, responses)] if score_query else list(responses)


def reward_name(spec: str) -> str:
    """A Python-identifier name for a reward spec: `rlhf_lens_vader`, `rlhf_lens_table_my_csv`, ...

    Trainers log a reward function under its name (TRL: `rewards/<name>/mean`)."""
    kind, arg, _ = parse_spec(spec)
    tail = Path(arg).name if arg else ""
    return re.sub(r"\W+", "_", f"rlhf_lens_{kind}_{tail}" if tail else f"rlhf_lens_{kind}").strip("_")


def _message_text(item: object) -> str:
    """A plain string as is; a conversation (a list of {"role", "content"} dicts) as its contents
    joined by newlines; a single message dict as its content."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        item = [item]
    if isinstance(item, list) and all(isinstance(m, dict) and "content" in m for m in item):
        return "\n".join(_content_text(m["content"]) for m in item)
    raise UserError(f"expected a string or a list of {{'role', 'content'}} messages, got {type(item).__name__}")


def _content_text(content: object) -> str:
    # Multimodal-style content is a list of parts; only the text parts are scored.
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


class TrlRewardFunc:
    """A reward with TRL's `reward_funcs` signature: `f(prompts, completions, **kwargs) -> list[float]`.

    Scores `scored_texts(prompts, completions, score_query)`: by default prompt + completion, as
    rlhf-lens's own PPO does (the paper's). Conversational prompts and completions (lists of
    {"role", "content"} messages) become their message contents joined by newlines; with
    `score_query` the prompt's messages come first, then a newline, then the completion's.
    A class rather than a closure so trainers can pickle it (the reward is rebuilt on unpickling).
    """

    def __init__(self, spec: str, score_query: bool = True, device: str = "cpu"):
        self.spec, self.score_query, self.device = spec, score_query, device
        self.__name__ = reward_name(spec)  # TRL's get_callable_name reads __name__
        self.reward = load_reward(spec, device=device)

    def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
        responses = [_message_text(c) for c in completions]
        if not self.score_query:
            texts = responses
        else:
            if prompts is None or len(prompts) != len(completions):
                raise UserError("TRL gave a different number of prompts and completions; cannot score prompt + completion")
            conversational = [not isinstance(p, str) for p in prompts]
            # A conversation's messages are separated by newlines, the prompt's last one from the completion too.
            texts = scored_texts([_message_text(p) + ("\n" if conv else "") for p, conv in zip(prompts, conversational)],
                                 responses)
        return [float(s) for s in self.reward(texts)]

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "score_query": self.score_query, "device": self.device}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["score_query"], state["device"])

    def __repr__(self) -> str:
        return f"trl_reward_func({self.spec!r}, score_query={self.score_query})"


def trl_reward_func(spec: str, score_query: bool = True, device: str = "cpu") -> TrlRewardFunc:
    """A reward spec as a TRL reward function (GRPOTrainer(reward_funcs=[trl_reward_func("vader")]));
    logged by TRL under `rlhf_lens_<kind>`. See TrlRewardFunc for what text is scored."""
    return TrlRewardFunc(spec, score_query=score_query, device=device)
