"""Completions of prompts sampled from a model with PPO's prompt rule and sampler (`rlhf.rollouts.sample`): the
candidates a gold reward later ranks into preference pairs (`label.label_pairs`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rlhf.config import PPOConfig

PROMPT_STREAM, LENGTH_STREAM, SAMPLE_STREAM = 0, 1, 2
"""Seed streams of `sample_completions`: the prompts, the completion lengths and the sampler draw apart."""


@dataclass
class Completions:
    """`completions[i]` are the sampled completions of `prompts[i]` (decoded, without the prompt)."""

    prompts: list[str]
    completions: list[list[str]]


def stream_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for one random stream of a seeded job: streams of the same seed are independent."""
    low, high = np.random.SeedSequence([abs(int(seed)), stream]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & (2**63 - 1)


def draw_prompts(corpus, tokenizer, n: int, seed: int, sampling: PPOConfig) -> list[list[int]]:
    """`n` prompts (token ids) of the corpus's train split, cut as PPO cuts them (`data.sample_prompts`)."""
    from ..data import sample_prompts

    return sample_prompts(corpus, tokenizer, n, seed=stream_seed(seed, PROMPT_STREAM) % 2**32, split="train",
                          min_chars=sampling.prompt_min_chars, min_tokens=sampling.prompt_min_tokens,
                          max_tokens=sampling.prompt_max_tokens)


def sample_completions(model, tokenizer, prompts: list[list[int]], n: int, sampling: PPOConfig, seed: int,
                       progress: bool = True) -> Completions:
    """`n` completions of every prompt, PPO's way: each completion's length drawn uniformly from
    sampling.min_new_tokens..max_new_tokens, tokens from `rlhf.rollouts.sample` (top_k, top_p) with a seeded
    generator, batch_size rollouts at a time (a prompt's completions side by side). Same seed, same texts."""
    import torch

    from ..progress import progress_bar
    from ..rlhf.rollouts import decode_rollouts, sample

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    rows = [p or [eos] for p in prompts for _ in range(n)]  # an empty prompt starts from EOS, as PPO's does
    rng = np.random.default_rng(stream_seed(seed, LENGTH_STREAM))
    lengths = rng.integers(sampling.min_new_tokens, sampling.max_new_tokens + 1, size=len(rows)).tolist()
    generator = torch.Generator(device=device).manual_seed(stream_seed(seed, SAMPLE_STREAM))
    queries: list[str] = []
    responses: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task("sampling completions", total=len(rows), visible=progress)
        for start in range(0, len(rows), sampling.batch_size):
            batch = rows[start:start + sampling.batch_size]
            rollouts = sample(model, batch, lengths[start:start + sampling.batch_size], eos, generator,
                              sampling.top_k, sampling.top_p)
            batch_queries, batch_responses = decode_rollouts(tokenizer, batch, rollouts)
            queries += batch_queries
            responses += batch_responses
            bar.advance(task, len(batch))
    return Completions(prompts=queries[::n], completions=[responses[i:i + n] for i in range(0, len(rows), n)])
