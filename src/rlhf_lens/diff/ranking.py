"""Causal block ranking: which blocks' own change moves the reward when put into the base model.

Δ_L accumulates along the residual stream: every block after the one that changed carries its change.
So block L is steered by its own contribution δ_L = Δ_L - Δ_{L-1} (Δ_{-1}: the embedding output's
difference), at one α, and ranked by the reward gain over the unsteered base (paired over the same
prompts and random numbers). `gain_per_norm` (gain / |α·δ_L|) is reported beside it; the ranking
uses the gain itself because dividing by a small own change inflates the noise of blocks that
changed little. A block whose steered model is incoherent (KL above the guard) ranks after the
coherent ones. Each block's null: `rank_random` random directions of the same norm at that block.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .steering import Advance, GroupResult, mean_se, random_directions, run_groups


def default_rank_layers(n_blocks: int, analysed: list[int], spread: int) -> list[int]:
    """`spread` blocks evenly over depth (first and last included) plus the analysed ones, sorted."""
    picks = {int(round(x)) for x in np.linspace(0, n_blocks - 1, spread)} if spread > 0 else set()
    return sorted(picks | set(analysed))


def ranking_groups(own: torch.Tensor, layers: list[int], n_random: int) -> int:
    """How many groups `causal_ranking` samples (a progress bar's total): each block's own change and its random
    directions; none for a block that did not change."""
    return sum(1 + n_random for layer in layers if float(own[layer].norm()) != 0)


def causal_ranking(base: nn.Module, tokenizer, reward, prompts: list[list[int]], own: torch.Tensor,
                   layers: list[int], alpha: float, base_result: GroupResult, n_new: int, seed: int,
                   n_random: int, coherence_kl: float, z_cut: float, advance: Advance | None = None) -> dict:
    """Steer each block in `layers` by α·δ_L (and by random directions of |δ_L|); rank by reward gain. `advance`:
    told of each generation call's groups (`run_groups`)."""
    d = own.shape[1]
    groups, owners = [], []
    randoms = {}
    for layer in layers:
        norm = float(own[layer].norm())
        if norm == 0:
            continue  # nothing changed here: gain 0 without sampling
        randoms[layer] = random_directions(d, norm, n_random, seed, layer + 1000) if n_random else torch.zeros(0, d)
        for k, v in enumerate(torch.cat([own[layer][None], randoms[layer]])):
            groups.append({layer: alpha * v})
            owners.append((layer, k))
    results = run_groups(base, base, tokenizer, reward, prompts, groups, n_new, seed, advance) if groups else []
    by = {owner: r for owner, r in zip(owners, results)}
    rows = []
    for layer in layers:
        norm = float(own[layer].norm())
        r = by.get((layer, 0), base_result)
        gain, gain_se = mean_se(r.rewards - base_result.rewards)
        null = [float((by[(layer, k)].rewards - base_result.rewards).mean()) for k in range(1, n_random + 1)
                if (layer, k) in by]
        rows.append({"layer": layer, "own_norm": norm, "gain": gain, "gain_se": gain_se,
                     "gain_per_norm": gain / (alpha * norm) if alpha > 0 and norm > 0 else 0.0,
                     "kl": r.kl, "coherent": r.kl <= coherence_kl, "null_gains": null,
                     "beats_null": bool(null) and gain > max(null) and gain_se > 0 and gain / gain_se >= z_cut})
    rows.sort(key=lambda row: (not row["coherent"], -row["gain"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    top = rows[0] if rows else None
    if top is None or top["gain"] <= 0 or not top["beats_null"]:
        verdict = "no block's own change raises the reward distinguishably from random directions"
    else:
        verdict = (f"block {top['layer']}'s own change raises the reward most (gain {top['gain']:+.3g} ± "
                   f"{top['gain_se']:.2g}, beyond its random directions)")
    return {"alpha": alpha, "direction": "own contribution Δ_L - Δ_{L-1}", "layers": list(layers), "rows": rows,
            "verdict": verdict}


def top_blocks(ranking: dict, n: int) -> list[int]:
    """The first n blocks of a causal ranking (`diff["ranking"]` or the whole diff dict), best first.

    For `divergence.rank = "causal"`: the blocks to analyse, in place of the most-moved parameters.
    """
    ranking = ranking.get("ranking", ranking)
    if n < 1:
        from ..errors import UserError

        raise UserError(f"the number of blocks must be at least 1 (got {n})")
    return [int(row["layer"]) for row in ranking.get("rows", [])[:n]]
