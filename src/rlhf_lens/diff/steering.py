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
    ids, attention = _left_padded(prompts)
    width = ids.shape[1]
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


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, width - len(x):] = torch.tensor(x)
        attention[i, width - len(x):] = 1
    return ids, attention


def prompt_inputs(model: nn.Module, prompts: list[list[int]]) -> tuple[torch.Tensor, dict]:
    """Left-padded prompt ids on the model's device and the forward kwargs (mask, positions, no cache) of a
    teacher-forced pass over them."""
    from ..models import positions

    device = next(model.parameters()).device
    ids, attention = _left_padded(prompts)
    ids, attention = ids.to(device), attention.to(device)
    return ids, {"attention_mask": attention, "position_ids": positions(attention), "use_cache": False}


def per_prompt_kl(lp: torch.Tensor, lp_ref: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """[rows]: mean over a row's real tokens of the next-token KL(exp lp || exp lp_ref) (log-probs [rows, T, V])."""
    kl = (lp.exp() * (lp - lp_ref)).sum(-1).clamp(min=0)
    mask = attention.float()
    return (kl * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def steered_kl(model: nn.Module, prompts: list[list[int]], layer: int, vectors: torch.Tensor) -> torch.Tensor:
    """[n]: mean next-token KL(steered || unsteered), teacher-forced on the prompts' tokens, of adding each row of
    `vectors` [n, d] at block `layer`'s residual output (batched). Cheap (no sampling): the scale on which random
    directions are matched to the change they stand in for."""
    device = next(model.parameters()).device
    vectors = vectors.float().reshape(-1, vectors.shape[-1])
    ids, kwargs = prompt_inputs(model, prompts)
    lp_base = torch.log_softmax(model(input_ids=ids, **kwargs).logits.float(), -1)
    p = len(prompts)
    per_call = max(1, MAX_ROWS // p)
    out = []
    for start in range(0, len(vectors), per_call):
        chunk = vectors[start:start + per_call].to(device)
        n = len(chunk)
        rep = {k: v.repeat(n, 1) for k, v in kwargs.items() if torch.is_tensor(v)}
        with Steer(model, {layer: chunk.repeat_interleave(p, 0)}):
            lp = torch.log_softmax(model(input_ids=ids.repeat(n, 1), use_cache=False, **rep).logits.float(), -1)
        per_prompt = per_prompt_kl(lp, lp_base.repeat(n, 1, 1), rep["attention_mask"])
        out.append(per_prompt.view(n, p).mean(1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def kl_matched_directions(model: nn.Module, prompts: list[list[int]], layer: int, target_kl: float, n: int,
                          seed: int, salt: int = 0, start_norm: float | None = None) -> torch.Tensor:
    """[n, d] seeded Gaussian directions, each rescaled so that `steered_kl` equals `target_kl` within a few
    percent (`kl_matched`, which also returns the KLs reached)."""
    return kl_matched(model, prompts, layer, target_kl, n, seed, salt, start_norm)[0]


def kl_matched(model: nn.Module, prompts: list[list[int]], layer: int, target_kl: float, n: int, seed: int,
               salt: int = 0, start_norm: float | None = None, steps: int = 8, tolerance: float = 0.03,
               redraws: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] seeded Gaussian directions, each rescaled so that `steered_kl` equals `target_kl` within `tolerance`
    (relative), and [n] the KL each reaches. A random direction of Δ's norm moves the output far less than Δ
    (Δ is aimed); matching on the KL caused compares changes of the same size. Secant steps on log KL against
    log norm (KL grows ~ norm² for small norms), from `start_norm` (default: 1). Behind a final norm the KL of
    some directions saturates below the target: those are drawn afresh (up to `redraws` times; the null is then
    random directions that can cause that KL), and any still short keep the closest norm found. Seeded by
    (seed, layer, salt)."""
    d = int(model.config.hidden_size)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, layer, salt, 13]).generate_state(1)[0]))

    def draw(k: int) -> torch.Tensor:
        x = torch.randn(k, d, generator=gen, dtype=torch.float64)
        return (x / x.norm(dim=1, keepdim=True)).float()

    units = draw(n)
    if n == 0 or target_kl <= 0:
        return units * 0.0, torch.zeros(n)
    norm, kl, err = match_norms(model, prompts, layer, units, target_kl, start_norm or 1.0, steps, tolerance)
    for _ in range(redraws):
        short = err > np.log1p(tolerance)
        if not bool(short.any()):
            break
        fresh = draw(int(short.sum()))
        f_norm, f_kl, f_err = match_norms(model, prompts, layer, fresh, target_kl, start_norm or 1.0, steps,
                                           tolerance)
        closer = f_err < err[short]
        idx = short.nonzero()[:, 0][closer]
        units[idx], norm[idx], kl[idx], err[idx] = fresh[closer], f_norm[closer], f_kl[closer], f_err[closer]
    return units * norm[:, None].float(), kl


def match_norms(model: nn.Module, prompts: list[list[int]], layer: int, units: torch.Tensor, target_kl: float,
                 start_norm: float, steps: int, tolerance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per unit direction: the norm found closest to the target KL, the KL there, and |log(KL / target)|."""
    n = len(units)
    goal = float(np.log(target_kl))
    norm = torch.full((n,), float(start_norm), dtype=torch.float64)
    best_norm, best_err, best_kl = norm.clone(), torch.full((n,), np.inf, dtype=torch.float64), torch.zeros(n)
    prev_log_norm = prev_log_kl = None
    for _ in range(steps):
        kl = steered_kl(model, prompts, layer, units * norm[:, None].float()).double()
        log_kl = kl.clamp(min=1e-30).log()
        err = (log_kl - goal).abs()
        better = err < best_err
        best_norm[better], best_err[better], best_kl[better] = norm[better], err[better], kl[better].float()
        done = best_err <= np.log1p(tolerance)
        if bool(done.all()):
            break
        log_norm = norm.log()
        slope = torch.full((n,), 2.0, dtype=torch.float64)  # KL ~ norm² until two points give the slope
        if prev_log_norm is not None:
            run = log_norm - prev_log_norm
            secant = (log_kl - prev_log_kl) / torch.where(run.abs() > 1e-12, run, torch.ones_like(run))
            slope = torch.where((run.abs() > 1e-12) & (secant > 0.2), secant, slope).clamp(0.5, 4.0)
        # a direction whose KL underflows to 0 gets a large step up; steps are capped at x/÷ 10
        step = ((goal - log_kl) / slope).clamp(-np.log(10), np.log(10))
        prev_log_norm, prev_log_kl = log_norm, log_kl
        norm = torch.where(done, best_norm, (log_norm + step).exp())
    return best_norm, best_kl, best_err


def curve_groups(delta: torch.Tensor, n_random: int, alphas: list[float]) -> int:
    """How many groups `steering_curve` samples (a progress bar's total): Δ at every α > 0 and its random
    directions at the reported α; none when Δ is zero."""
    return 0 if float(delta.norm()) == 0 else sum(a > 0 for a in alphas) + n_random


def reported_alpha(rows: list[dict]) -> float:
    """The largest α below the first incoherent one (rows sorted by α, the first α = 0): steering past an
    incoherent α says nothing, however coherent a larger α happens to be."""
    alpha = 0.0
    for row in rows:
        if not row["coherent"]:
            break
        alpha = row["alpha"]
    return alpha


def steering_curve(base: nn.Module, tokenizer, reward, prompts: list[list[int]], layer: int, delta: torch.Tensor,
                   alphas: list[float], base_result: GroupResult, n_new: int, seed: int, coherence_kl: float,
                   n_random: int, advance: Advance | None = None) -> dict:
    """Reward of base + α·Δ_L at each α; at the reported α (`reported_alpha`) also of `n_random` random directions
    matched on the KL α·Δ_L causes (teacher-forced on the prompts, `kl_matched`) and the test of Δ against them
    (`vector_test`, under "test"). The verdict needs every analysed block's p (Holm): vector_test.curve_verdicts.
    `advance`: told of each generation call's groups (`run_groups`)."""
    from .vector_test import vector_test

    positive = [a for a in alphas if a > 0]
    zero = float(delta.norm()) == 0
    results = [] if zero else run_groups(base, base, tokenizer, reward, prompts, [{layer: a * delta} for a in positive],
                                         n_new, seed, advance)
    base_mean, base_se = mean_se(base_result.rewards)
    rows = [{"alpha": 0.0, "reward": base_mean, "se": base_se, "gain": 0.0, "gain_se": 0.0, "kl": 0.0,
             "coherent": True}]
    by_alpha = {0.0: base_result}
    for i, a in enumerate(positive):
        r = base_result if zero else results[i]
        by_alpha[a] = r
        mean, se = mean_se(r.rewards)
        gain, gain_se = mean_se(r.rewards - base_result.rewards)
        rows.append({"alpha": a, "reward": mean, "se": se, "gain": gain, "gain_se": gain_se, "kl": r.kl,
                     "coherent": r.kl <= coherence_kl})
    alpha = reported_alpha(rows)
    result = {"layer": layer, "delta_norm": float(delta.norm()), "alphas": [row["alpha"] for row in rows],
              "delta": rows, "alpha": alpha, "coherence_kl": coherence_kl, "random": None, "test": None,
              "promoted_change": None, "examples": []}
    if zero or alpha == 0:
        if advance is not None and not zero:
            advance(n_random)  # the random directions are not sampled
        result["reason"] = ("Δ is zero" if zero else "no α > 0 in diff.alphas" if not positive else
                            f"no coherent α > 0 (at α = {positive[0]:g} the steered model "
                            f"is more than {coherence_kl} nats per token from the base); lower diff.alphas")
        return result
    target = float(steered_kl(base, prompts, layer, alpha * delta[None])[0])
    randoms, kls = kl_matched(base, prompts, layer, target, n_random, seed, salt=1, start_norm=alpha * float(delta.norm()))
    rand = run_groups(base, base, tokenizer, reward, prompts, [{layer: v} for v in randoms], n_new, seed, advance)
    r = by_alpha[alpha]
    result["random"] = {"alpha": alpha, "target_kl": target, "norms": randoms.norm(dim=1).tolist(),
                        "matched_kl": kls.tolist(), "rewards": [float(x.rewards.mean()) for x in rand],
                        "kl": [x.kl for x in rand]}
    result["test"] = vector_test(r.rewards, np.stack([x.rewards for x in rand]), seed=seed + layer)
    result.update(promoted_change=(r.share, r.change),
                  examples=[{"prompt": q, "steered": t, "base": b}
                            for q, t, b in zip(tokenizer.batch_decode(prompts[:3], skip_special_tokens=True),
                                               r.texts[:3], base_result.texts[:3])])
    return result
