"""Steering: add vectors to the residual output of chosen blocks of the base model, sample, score.

Every steered variant (a "group": block -> vector) is sampled on the same held-out prompts with the
same random numbers: at each step a row draws its token by inverse CDF from one uniform per
(prompt, step), shared by all groups. Differences between groups are then differences of the
steering, not of sampling luck (common random numbers), so a few dozen prompts suffice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .paired import block_output

MAX_ROWS = 192  # rows (prompts x groups) per generation call: bounds the KV cache and logits memory


class Steer:
    """Forward hooks adding `vectors[block][row]` to that block's residual output at every position."""

    def __init__(self, model: nn.Module, vectors: dict[int, torch.Tensor]):
        from ..models import blocks

        self.handles = [blocks(model)[layer].register_forward_hook(self._hook(v)) for layer, v in vectors.items()]

    @staticmethod
    def _hook(vector: torch.Tensor):
        def hook(module, inputs, output):
            hidden = block_output(output)
            steered = hidden + vector[:, None, :].to(hidden.dtype)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    def __enter__(self) -> Steer:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class GroupResult:
    rewards: np.ndarray
    """[P]: reward of prompt + continuation, per prompt."""
    kl: float
    """Mean over sampled tokens of KL(steered || base) of the next-token distribution."""
    change: torch.Tensor
    """[V]: mean over sampled positions of log p_steered - log p_base."""
    share: torch.Tensor
    """[V]: mean over sampled positions of p_steered (log p_steered - log p_base) (each token's share of the KL)."""
    texts: list[str]
    """The continuations (without the prompt)."""


def heldout_prompts(corpus, tokenizer, n: int, split: str, read: list[str], seed: int,
                    min_chars: int | None = None) -> list[list[int]]:
    """`n` prompts (a document's first 2..9 tokens, as PPO draws them: `data.sample_prompts`) from the split's
    documents the paired pass did not read (`read`: its texts); from the whole split if too few remain.

    `min_chars`: the run's rlhf.prompt_min_chars (PPO's default when None); a split with no document that long
    adapts as PPO's prompts do (its documents of at least 2 tokens, said once on stderr)."""
    from ..data import Corpus, sample_prompts
    from ..rlhf.config import PPOConfig

    min_chars = PPOConfig.prompt_min_chars if min_chars is None else min_chars
    docs = corpus.documents(split)
    seen = set(read)
    rest = [d for d in docs if d.text not in seen]
    rest = rest if len(rest) >= max(8, n // 4) else docs
    # Two split names over the same documents: a one-split Corpus would hold out a fifth of them again.
    held = Corpus(f"{corpus.name} (held out)", {"test": list(rest), "train": list(rest)})
    return sample_prompts(held, tokenizer, n, seed=seed, split="test", min_chars=min_chars)


def _batch_vectors(groups: list[dict[int, torch.Tensor]], n_prompts: int, d: int, device) -> dict[int, torch.Tensor]:
    layers = sorted({layer for g in groups for layer in g})
    out = {}
    for layer in layers:
        rows = [g.get(layer, torch.zeros(d)).float() for g in groups]
        out[layer] = torch.stack(rows).repeat_interleave(n_prompts, 0).to(device)
    return out


@torch.no_grad()
def _sample(model: nn.Module, prompts: list[list[int]], n_groups: int, n_new: int, eos_id: int | None,
            uniforms: torch.Tensor):
    """Left-padded prompts (repeated per group) + n_new tokens drawn by inverse CDF from `uniforms` [P, n_new]."""
    from ..models import kwarg_names, positions

    device = next(model.parameters()).device
    p, width = len(prompts), max(len(x) for x in prompts)
    ids = torch.zeros(p, width, dtype=torch.long)
    attention = torch.zeros(p, width, dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, width - len(x):] = torch.tensor(x)
        attention[i, width - len(x):] = 1
    ids, attention = ids.repeat(n_groups, 1).to(device), attention.repeat(n_groups, 1).to(device)
    u = uniforms.repeat(n_groups, 1).to(device)
    cache_arg = "cache" if "cache" in kwarg_names(model) else "past_key_values"
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions(attention), use_cache=True)
    position = positions(attention)[:, -1:]
    alive = torch.ones(len(ids), dtype=torch.bool, device=device)
    tokens, masks = [], []
    for t in range(n_new):
        probs = out.logits[:, -1].float().softmax(-1)
        cdf = probs.cumsum(-1)
        token = torch.searchsorted(cdf, (u[:, t:t + 1] * cdf[:, -1:]).contiguous()).clamp(max=probs.shape[-1] - 1)
        masks.append(alive.clone())
        tokens.append(token)
        if eos_id is not None:
            alive = alive & (token[:, 0] != eos_id)
        if t + 1 == n_new:
            break
        attention = torch.cat([attention, torch.ones(len(ids), 1, dtype=torch.long, device=device)], 1)
        position = position + 1
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        out = model(input_ids=token, attention_mask=attention, position_ids=position, use_cache=True,
                    **{cache_arg: cache})
    mask = torch.stack(masks, 1)
    full_ids = torch.cat([ids, torch.cat(tokens, 1)], 1)
    full_attention = torch.cat([attention[:, :width], mask.long()], 1)
    return full_ids, full_attention, mask, width


@torch.no_grad()
def _kl_and_change(policy: nn.Module, reference: nn.Module, vectors: dict[int, torch.Tensor], ids, attention, mask,
                   width: int, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: mean KL(policy || reference) over its sampled tokens, and the sum of log-prob changes there."""
    from ..models import positions

    window = slice(width - 1, width - 1 + n_new)  # positions that predicted the sampled tokens
    kwargs = {"attention_mask": attention, "position_ids": positions(attention), "use_cache": False}
    with Steer(policy, vectors):
        lp_s = torch.log_softmax(policy(input_ids=ids, **kwargs).logits[:, window].float(), -1)
    lp_b = torch.log_softmax(reference(input_ids=ids, **kwargs).logits[:, window].float(), -1)
    m = mask.float()
    diff = lp_s - lp_b
    kl = ((lp_s.exp() * diff).sum(-1).clamp(min=0) * m).sum(1) / m.sum(1).clamp(min=1)
    change = (diff * m[..., None]).sum(1)  # [rows, V]
    share = (lp_s.exp() * diff * m[..., None]).sum(1)
    return kl.cpu(), change.cpu(), share.cpu()


Advance = Callable[[int], None]
"""Told how many more groups have been sampled (a progress bar's `advance`)."""


def run_groups(policy: nn.Module, reference: nn.Module, tokenizer, reward, prompts: list[list[int]],
               groups: list[dict[int, torch.Tensor]], n_new: int, seed: int,
               advance: Advance | None = None) -> list[GroupResult]:
    """Sample every group (block -> vector added to the policy there) on the same prompts and random numbers;
    `advance(n)` after each generation call of n groups."""
    d = int(policy.config.hidden_size)
    device = next(policy.parameters()).device
    uniforms = torch.rand(len(prompts), n_new, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    uniforms = uniforms.float().clamp(1e-7, 1 - 1e-7)
    per_call = max(1, MAX_ROWS // len(prompts))
    eos = tokenizer.eos_token_id
    queries = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    results: list[GroupResult] = []
    for start in range(0, len(groups), per_call):
        chunk = groups[start:start + per_call]
        vectors = _batch_vectors(chunk, len(prompts), d, device)
        with Steer(policy, vectors):
            ids, attention, mask, width = _sample(policy, prompts, len(chunk), n_new, eos, uniforms)
        kls, changes, shares = [], [], []
        for lo in range(0, len(ids), 64):  # full-vocabulary log-probs: a few rows at a time
            part = slice(lo, lo + 64)
            kl, change, share = _kl_and_change(policy, reference, {k: v[part] for k, v in vectors.items()}, ids[part],
                                        attention[part], mask[part], width, n_new)
            kls.append(kl)
            changes.append(change)
            shares.append(share)
        kl, change, share = torch.cat(kls), torch.cat(changes), torch.cat(shares)
        lengths = mask.sum(1).tolist()
        responses = tokenizer.batch_decode([r[:n] for r, n in zip(ids[:, width:].tolist(), lengths)],
                                           skip_special_tokens=True)
        p = len(prompts)
        for g in range(len(chunk)):
            rows = slice(g * p, (g + 1) * p)
            texts = responses[rows]
            scores = np.array([float(s) for s in reward([q + r for q, r in zip(queries, texts)])])
            n_tokens = max(1.0, float(mask[rows].sum()))
            results.append(GroupResult(rewards=scores, kl=float(kl[rows].mean()),
                                       change=change[rows].sum(0) / n_tokens, share=share[rows].sum(0) / n_tokens,
                                       texts=texts))
        if advance is not None:
            advance(len(chunk))
    return results


def mean_se(values: np.ndarray) -> tuple[float, float]:
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), se


def random_directions(d: int, norm: float, n: int, seed: int, layer: int) -> torch.Tensor:
    """[n, d] Gaussian directions scaled to `norm`, seeded by (seed, layer)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, layer, 11]).generate_state(1)[0]))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True) * norm).float()


def curve_groups(delta: torch.Tensor, n_random: int, alphas: list[float]) -> int:
    """How many groups `steering_curve` samples (a progress bar's total): Δ and its random directions at every
    α > 0; none when Δ is zero."""
    return 0 if float(delta.norm()) == 0 else sum(a > 0 for a in alphas) * (1 + n_random)


def steering_curve(base: nn.Module, tokenizer, reward, prompts: list[list[int]], layer: int, delta: torch.Tensor,
                   randoms: torch.Tensor, alphas: list[float], base_result: GroupResult, n_new: int, seed: int,
                   coherence_kl: float, z_cut: float, advance: Advance | None = None) -> dict:
    """Reward of base + α·Δ_L and of α·(random directions of |Δ_L|) for each α; the reported α and a verdict.
    `advance`: told of each generation call's groups (`run_groups`)."""
    positive = [a for a in alphas if a > 0]
    zero = float(delta.norm()) == 0
    groups = [] if zero else [{layer: a * v} for a in positive for v in torch.cat([delta[None], randoms])]
    results = run_groups(base, base, tokenizer, reward, prompts, groups, n_new, seed, advance) if groups else []
    k = 1 + len(randoms)
    rows, random_rows = [], []
    base_mean, base_se = mean_se(base_result.rewards)
    rows.append({"alpha": 0.0, "reward": base_mean, "se": base_se, "gain": 0.0, "gain_se": 0.0, "kl": 0.0,
                 "coherent": True})
    random_rows.append({"alpha": 0.0, "rewards": [base_mean] * len(randoms), "kl": [0.0] * len(randoms)})
    by_alpha: dict[float, tuple[GroupResult, list[GroupResult]]] = {}
    for i, a in enumerate(positive):
        if zero:
            r, rand = base_result, [base_result] * len(randoms)
        else:
            r, rand = results[i * k], results[i * k + 1:(i + 1) * k]
        by_alpha[a] = (r, rand)
        mean, se = mean_se(r.rewards)
        gain, gain_se = mean_se(r.rewards - base_result.rewards)
        rows.append({"alpha": a, "reward": mean, "se": se, "gain": gain, "gain_se": gain_se, "kl": r.kl,
                     "coherent": r.kl <= coherence_kl})
        random_rows.append({"alpha": a, "rewards": [float(x.rewards.mean()) for x in rand],
                            "kl": [x.kl for x in rand]})
    coherent = [row["alpha"] for row in rows if row["coherent"]]
    alpha = max(coherent)
    result = {"layer": layer, "delta_norm": float(delta.norm()), "alphas": [row["alpha"] for row in rows],
              "delta": rows, "random": random_rows, "alpha": alpha, "coherence_kl": coherence_kl}
    if zero:
        result.update(verdict="no change distinguishable from random directions (Δ is zero)", null=None,
                      promoted_change=None, examples=[])
        return result
    if alpha == 0:
        result.update(verdict=f"no coherent α > 0 (every steered model is more than {coherence_kl} nats per token "
                              "from the base); lower the α grid", null=None, promoted_change=None, examples=[])
        return result
    r, rand = by_alpha[alpha]
    row = rows[[x["alpha"] for x in rows].index(alpha)]
    null = np.array([x.rewards.mean() for x in rand])
    std = float(null.std(ddof=1)) if len(null) > 1 else 0.0
    z = (row["reward"] - float(null.mean())) / std if std > 0 else None
    paired_z = row["gain"] / row["gain_se"] if row["gain_se"] > 0 else 0.0
    beats = row["reward"] > float(null.max())
    if beats and paired_z >= z_cut:
        z_text = f"z={z:.1f} against them" if z is not None else "they do not move it"
        verdict = (f"steering base by {alpha:g}·Δ_{layer} raises the reward beyond every random direction "
                   f"({row['reward']:.3g} vs {null.max():.3g} at most; {z_text})")
    elif row["gain"] < 0 and row["reward"] < float(null.min()) and -paired_z >= z_cut:
        verdict = f"steering base by {alpha:g}·Δ_{layer} lowers the reward below every random direction"
    else:
        verdict = "no change distinguishable from random directions"
    result.update(verdict=verdict, null={"mean": float(null.mean()), "std": std, "max": float(null.max()),
                                         "min": float(null.min()), "z": z, "paired_z": paired_z},
                  promoted_change=(r.share, r.change),
                  examples=[{"prompt": q, "steered": t, "base": b}
                            for q, t, b in zip(tokenizer.batch_decode(prompts[:3], skip_special_tokens=True),
                                               r.texts[:3], base_result.texts[:3])])
    return result
