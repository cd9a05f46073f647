"""Held-out evaluations: `evaluate_reward` (one model's completions of the held-out prompts, scored by the reward,
optionally by a gold reward and with their KL to a reference), the evaluations PPO runs along the tune
(`eval_row`, out/evals.jsonl) and the completions' repetition (`repetition`).

Every evaluation draws the same response lengths and the same sampling stream (seeded by config.seed alone, own
generators: the training's random streams are untouched), so evaluations differ only by the model's weights.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..io import write_text
from ..nulls import mean_se
from .config import PPOConfig
from .rollouts import _generator, _score, _seed, decode_rollouts, response_forward, sample, token_logprobs

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def evaluate_reward(model, tokenizer, reward, prompts: list[list[int]], config: PPOConfig, gold=None,
                    reference=None) -> dict:
    """Mean reward (with standard error) and fraction positive of completions of `prompts`; with `gold` (a reward)
    the gold's scores too, with `reference` (a model) each response's KL to it: the sum over the response tokens of
    log pi(y_t) - log pi_ref(y_t) of the sampled tokens (nats per response).

    Response lengths and sampling are seeded by config.seed alone, so two models evaluated with
    the same prompts and config get the same lengths and random streams.
    """
    device = next(model.parameters()).device
    rng = np.random.RandomState(_seed(config.seed, 2**30) % 2**32)
    lengths = rng.randint(config.min_new_tokens, config.max_new_tokens + 1, size=len(prompts)).tolist()
    generator = _generator(device, _seed(config.seed, 2**30 + 1))
    eos = tokenizer.eos_token_id
    scores: list[float] = []
    gold_scores: list[float] = []
    kls: list[float] = []
    completions = []
    for start in range(0, len(prompts), config.batch_size):
        batch = [p or [eos] for p in prompts[start:start + config.batch_size]]
        rollouts = sample(model, batch, lengths[start:start + config.batch_size], eos, generator, config.top_k,
                          config.top_p)
        queries, responses = decode_rollouts(tokenizer, batch, rollouts)
        batch_scores = _score(reward, queries, responses, config.score_query)
        scores += batch_scores
        if gold is not None:
            gold_scores += _score(gold, queries, responses, config.score_query)
        if reference is not None:
            kls += _response_kl(reference, rollouts, config.mini_batch_size)
        completions += [{"prompt": q, "response": r, "reward": s} for q, r, s in zip(queries, responses, batch_scores)]
    values = np.array(scores)
    return {**mean_se(scores), "positive_frac": float((values > 0).mean()), "n": len(values),
            "completions": completions, "scores": scores, "gold_scores": gold_scores if gold is not None else None,
            "kl": kls if reference is not None else None}


@torch.no_grad()
def _response_kl(reference, rollouts, chunk: int) -> list[float]:
    """Per response: sum over its tokens of the sampling log-probability minus the reference's."""
    n = rollouts.mask.shape[1]
    out = []
    for i in range(0, len(rollouts.input_ids), chunk):
        part = slice(i, i + chunk)
        ref_logits = response_forward(reference, rollouts.input_ids[part], rollouts.attention_mask[part], n,
                                      hidden=False)[0]
        ref = token_logprobs(ref_logits, rollouts.responses[part])
        out += ((rollouts.logprobs[part] - ref) * rollouts.mask[part]).sum(1).tolist()
    return [float(x) for x in out]


def repetition(texts: list[str]) -> dict:
    """distinct_2: unique word bigrams / all word bigrams over the texts (bigrams within a text); top_word and
    top_word_share: the most frequent word and its share of all words (lower-cased words, ties: the first seen)."""
    words = [_WORD.findall(text.lower()) for text in texts]
    bigrams = [tuple(w[i:i + 2]) for w in words for i in range(len(w) - 1)]
    counts = Counter(word for w in words for word in w)
    total = sum(counts.values())
    top, top_count = counts.most_common(1)[0] if counts else ("", 0)
    return {"distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else None, "top_word": top,
            "top_word_share": top_count / total if total else None}


def eval_row(step: int, result: dict, seconds: float | None = None) -> dict:
    """One row of evals.jsonl from an `evaluate_reward` result (with reference; gold optional): the means and the
    per-prompt arrays of proxy, gold and KL (for the bootstrap of `gold.gold_curve`)."""
    kl = mean_se(result["kl"])
    gold = result["gold_scores"]
    return {"step": step, "n": result["n"], "proxy": {k: result[k] for k in ("mean", "se")},
            "gold": mean_se(gold) if gold is not None else None, "kl": kl, "sqrt_kl": float(np.sqrt(max(kl["mean"], 0.0))),
            **repetition([c["response"] for c in result["completions"]]),
            **({"eval_s": round(seconds, 4)} if seconds is not None else {}),
            "per_prompt": {"proxy": result["scores"], "gold": gold, "kl": result["kl"]}}


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file a PPO run writes (log.jsonl, evals.jsonl); none when it is missing."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only a torn last line can be bad (writes are atomic): keep what came before
    return rows


def read_evals(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The rows of evals.jsonl (none when missing), those after `up_to_step` dropped (a resumed run redoes them)."""
    return [r for r in read_rows(path) if up_to_step is None or r["step"] <= up_to_step]


def write_evals(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
