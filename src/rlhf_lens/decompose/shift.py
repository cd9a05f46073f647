"""Shared-dictionary shift: one SAE (the base model's) encodes both models' activations on the same tokens;
the latents whose mean activation or firing rate moves most are the change, and they come already explained
by the base SAE's feature records (the reading of OpenAI's persona-features work, on this project's stores).

Null: the base rows alone, split into two halves by document (seeded, `shift.splits` times). Per latent the
difference of the halves' mean activation is what document sampling alone moves it by; its root mean square
over splits is the latent's own null scale (z = change / that), and the `shift.quantile` quantile of |difference|
over all latents and splits is the threshold above which a latent counts as shifted. The halves hold half the
rows each and the tuned rows are the same tokens as the base rows, so this null is conservative.

Output format: docs/diff.md, section "Shared-dictionary shift".
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..store import ActivationStore
from .config import DecomposeConfig, check_decompose_config

ROWS_PER_CHUNK = 8192


@torch.no_grad()
def shift_stats(sae, base: ActivationStore, tuned: ActivationStore, layer: int, splits: int, seed: int) -> dict:
    """One pass over the paired rows: per latent the summed codes and firing counts of base and tuned, and, per
    seeded halving of the documents, the summed codes and firing counts of half A of the base rows."""
    from .paired_store import iter_paired

    m = int(sae.cfg.dict_size)
    rng = np.random.default_rng([seed, 0x5, 0x1F7])
    assign = torch.from_numpy(np.stack([rng.permutation(base.n_docs) < (base.n_docs + 1) // 2
                                        for _ in range(splits)])).double()  # [S, n_docs], 1 = half A
    sums = {key: torch.zeros(m, dtype=torch.float64) for key in ("base", "tuned", "fire_base", "fire_tuned")}
    half_sum, half_fire = torch.zeros(splits, m, dtype=torch.float64), torch.zeros(splits, m, dtype=torch.float64)
    half_n = torch.zeros(splits, dtype=torch.float64)
    n = 0
    for sb, st in iter_paired(base, tuned, layer):
        for lo in range(0, len(sb.doc), ROWS_PER_CHUNK):
            part = slice(lo, lo + ROWS_PER_CHUNK)
            fb, ft = sae.encode(sb.acts[part]).double(), sae.encode(st.acts[part]).double()
            firing_b = (fb != 0).double()
            sums["base"] += fb.sum(0)
            sums["tuned"] += ft.sum(0)
            sums["fire_base"] += firing_b.sum(0)
            sums["fire_tuned"] += (ft != 0).double().sum(0)
            mask = assign[:, sb.doc[part]]  # [S, rows]
            half_sum += mask @ fb
            half_fire += mask @ firing_b
            half_n += mask.sum(1)
            n += len(fb)
    return {**sums, "half_sum": half_sum, "half_fire": half_fire, "half_n": half_n, "n": n}


def _null(total: torch.Tensor, half: torch.Tensor, half_n: torch.Tensor, n: int) -> torch.Tensor:
    """[S, m]: mean over half A minus mean over half B, per split (a split with an empty half gives 0)."""
    other_n = n - half_n
    ok = (half_n > 0) & (other_n > 0)
    diff = half / half_n.clamp(min=1)[:, None] - (total[None] - half) / other_n.clamp(min=1)[:, None]
    return diff * ok[:, None]


def shared_dictionary_shift(sae, base_store: ActivationStore | str | os.PathLike,
                            tuned_store: ActivationStore | str | os.PathLike, layer: int,
                            config: DecomposeConfig | None = None) -> dict:
    """Encode both stores' `layer` (same tokens) with the base SAE `sae`; per latent the change of mean activation
    and of firing rate, against a null of document halvings of the base rows; the top latents by
    `config.shift.rank_by`. Keys in docs/diff.md."""
    from .paired_store import open_store

    config = config or DecomposeConfig()
    check_decompose_config(config)
    base, tuned = open_store(base_store), open_store(tuned_store)
    s = shift_stats(sae, base, tuned, layer, config.shift.splits, config.seed)
    n = max(s["n"], 1)
    mean_b, mean_t = s["base"] / n, s["tuned"] / n
    rate_b, rate_t = s["fire_base"] / n, s["fire_tuned"] / n
    change, rate_change = mean_t - mean_b, rate_t - rate_b
    null = _null(s["base"], s["half_sum"], s["half_n"], s["n"])
    rate_null = _null(s["fire_base"], s["half_fire"], s["half_n"], s["n"])
    null_rms = null.pow(2).mean(0).sqrt()
    rate_null_rms = rate_null.pow(2).mean(0).sqrt()
    threshold = float(torch.quantile(null.abs().flatten(), config.shift.quantile))
    rate_threshold = float(torch.quantile(rate_null.abs().flatten(), config.shift.quantile))
    z = torch.where(null_rms > 0, change / null_rms.clamp(min=1e-30),
                    torch.where(change != 0, torch.sign(change) * float("inf"), torch.zeros_like(change)))
    shifted = change.abs() > threshold
    rate_shifted = rate_change.abs() > rate_threshold
    key = change.abs() if config.shift.rank_by == "mean" else z.abs()
    order = torch.argsort(key, descending=True).tolist()

    def finite(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    top = [{"latent": int(j), "mean_base": float(mean_b[j]), "mean_tuned": float(mean_t[j]),
            "mean_change": float(change[j]), "rate_base": float(rate_b[j]), "rate_tuned": float(rate_t[j]),
            "rate_change": float(rate_change[j]), "z": finite(float(z[j])), "null_rms": float(null_rms[j]),
            "rate_z": float(rate_change[j] / rate_null_rms[j]) if rate_null_rms[j] > 0 else None,
            "shifted": bool(shifted[j]), "rate_shifted": bool(rate_shifted[j])}
           for j in order[:config.shift.top] if key[j] > 0]
    return {"layer": int(layer), "n_rows": s["n"], "n_docs": base.n_docs, "n_latents": int(sae.cfg.dict_size),
            "splits": config.shift.splits, "quantile": config.shift.quantile, "threshold": threshold,
            "rate_threshold": rate_threshold, "rank_by": config.shift.rank_by,
            "n_shifted": int(shifted.sum()), "n_rate_shifted": int(rate_shifted.sum()),
            "n_rising": int((shifted & (change > 0)).sum()), "n_falling": int((shifted & (change < 0)).sum()),
            "top": top}


def count_among(result: dict, features: list[int]) -> dict:
    """How many of the listed top latents that count as shifted are among `features` (e.g. the top-MMCS features
    the interpretation stage explained): {"count", "of", "latents", "features"}."""
    wanted = {int(f) for f in features}
    shifted = [t["latent"] for t in result["top"] if t["shifted"]]
    both = [j for j in shifted if j in wanted]
    return {"count": len(both), "of": len(shifted), "latents": both, "features": len(wanted)}
