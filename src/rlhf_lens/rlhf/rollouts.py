"""Rollouts: sample responses from the policy (with its value head), score them, and seed the random streams.

A plain sampling loop with the KV cache (not `generate()`): prompts left-padded, responses right-padded and
cut after `lengths[i]` tokens or their first EOS. `_seed` mixes (run seed, step, stream) so that each step's
draws are independent of the others and a resumed run draws the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..models import kwarg_names, positions
from ..rewards import scored_texts
from .ppo import ValueHead


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the smallest set holding top_p of the mass."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        probs = ordered.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def response_forward(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                     hidden: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (if `hidden`) last hidden states at the positions that predict the last `n_response` tokens."""
    kwargs = {}
    if "logits_to_keep" in kwarg_names(lm):  # skip the LM head on prompt positions
        kwargs["logits_to_keep"] = n_response + 1
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
             use_cache=False, output_hidden_states=hidden, **kwargs)
    window = slice(-(n_response + 1), -1)
    return out.logits[:, window], (out.hidden_states[-1][:, window] if hidden else None)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class Rollouts:
    """Left-padded prompts followed by sampled responses (right-padded)."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]: 0 on prompt padding and after a response's end
    mask: torch.Tensor  # [B, T] float: 1.0 on response tokens
    logprobs: torch.Tensor  # [B, T]: log-probability of each sampled token under the sampling policy
    values: torch.Tensor | None  # [B, T]: value head at the position that chose each token
    prompt_len: int
    logits: torch.Tensor | None = None  # [B, T, V]: the sampling logits, kept for kl_penalty "full"

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]


@torch.no_grad()
def sample(lm, prompts: list[list[int]], lengths: list[int], eos_id: int | None, generator: torch.Generator,
           top_k: int = 0, top_p: float = 1.0, value_head: ValueHead | None = None,
           keep_logits: bool = False) -> Rollouts:
    """Sample one response per prompt, reusing the KV cache. A response ends after `lengths[i]`
    tokens or at its first EOS (kept as its last token); tokens sampled after that are masked."""
    device = next(lm.parameters()).device
    batch, width, steps = len(prompts), max(len(p) for p in prompts), max(lengths)
    ids = torch.zeros(batch, width, dtype=torch.long, device=device)
    attention = torch.zeros(batch, width, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        attention[i, width - len(p):] = 1
    cache_arg = "cache" if "cache" in kwarg_names(lm) else "past_key_values"  # renamed in transformers 5.x
    out = lm(input_ids=ids, attention_mask=attention, position_ids=positions(attention), use_cache=True,
             output_hidden_states=value_head is not None)
    position = positions(attention)[:, -1:]
    limit = torch.tensor(lengths, device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    tokens, logprobs, values, masks, kept = [], [], [], [], []
    for t in range(steps):
        logits = out.logits[:, -1].float()
        if keep_logits:
            kept.append(logits)
        if value_head is not None:
            values.append(value_head(out.hidden_states[-1][:, -1]))
        probs = filter_logits(logits, top_k, top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator)
        alive = alive & (t < limit)
        masks.append(alive.clone())
        tokens.append(token)
        logprobs.append(token_logprobs(logits, token[:, 0]))
        if eos_id is not None:
            alive = alive & (token[:, 0] != eos_id)
        if t + 1 == steps:
            break
        attention = torch.cat([attention, torch.ones(batch, 1, dtype=torch.long, device=device)], 1)
        position = position + 1
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        out = lm(input_ids=token, attention_mask=attention, position_ids=position, use_cache=True,
                 output_hidden_states=value_head is not None, **{cache_arg: cache})
    mask = torch.stack(masks, 1)
    return Rollouts(
        input_ids=torch.cat([ids, torch.cat(tokens, 1)], 1),
        attention_mask=torch.cat([attention[:, :width], mask.long()], 1),
        mask=mask.float(), logprobs=torch.stack(logprobs, 1),
        values=torch.stack(values, 1) if values else None, prompt_len=width,
        logits=torch.stack(kept, 1) if kept else None,
    )


def decode_rollouts(tokenizer, prompts: list[list[int]], rollouts: Rollouts) -> tuple[list[str], list[str]]:
    """Prompt texts and response texts (special tokens such as EOS dropped)."""
    lengths = rollouts.mask.sum(1).long().tolist()
    queries = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    responses = tokenizer.batch_decode([r[:n] for r, n in zip(rollouts.responses.tolist(), lengths)],
                                       skip_special_tokens=True)
    return queries, responses


def _score(reward, queries: list[str], responses: list[str], score_query: bool) -> list[float]:
    texts = scored_texts(queries, responses, score_query)
    scores = [float(s) for s in reward(texts)]
    if len(scores) != len(texts) or not all(math.isfinite(s) for s in scores):
        raise UserError("the reward returned a wrong number of scores or a non-finite score; check the reward")
    return scores


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from (run seed, step, stream): each step's draws are independent of the others."""
    low, high = np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & (2**63 - 1)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
