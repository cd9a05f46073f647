"""diff-SAE: sparse autoencoders trained on Δ = h_tuned - h_base at the same tokens (the idea of Aranguri,
Drori & Nanda 2025: decompose the change itself, not each model).

- `train_diff_saes`: SAEs (BatchTopK when `rlhf_lens.sae` offers it, else TopK; 1-2x expansion; several seeds)
  on a Δ store (`paired_store.delta_store`), through the project's `train_saes`.
- `latent_stats` / `diff_sae`: each latent's share of the change, sum over rows of |f_j d_j|^2 over
  sum over rows of |Δ|^2; the top latents and their seed agreement (max cosine of a top latent's decoder
  row to the other seeds' decoder rows).
- `steer_latents` / `steer_top_latents`: the causal reading: add a latent's decoder row (scaled) to the base
  model's block output and sample, against random directions of the same norm (diff/steering.py). For a
  store of MLP outputs this is the same intervention as adding the vector to the MLP's output, since the
  MLP output is added into the residual stream that the block returns.

Output format: docs/diff.md, section "diff-SAE".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..store import ActivationStore
from .config import DecomposeConfig, check_decompose_config

ROWS_PER_CHUNK = 8192
DEFAULT_ARCH = "batchtopk"
"""Architecture of the diff-SAEs when the config names none."""


def diffsae_configs(d: int, config: DecomposeConfig) -> list:
    """One SAEConfig per seed of `config.diffsae.seeds` for Δ rows of width d."""
    from ..sae import SAEConfig

    arch = config.diffsae.arch or DEFAULT_ARCH
    m = max(1, round(config.diffsae.expansion * d))
    k = min(config.diffsae.k, m)
    # Each seed its own data order (data_seed from the SAE seed): the seed agreement then measures what the
    # order and the initialisation change together, not init noise alone. Capped by tokens, not by the clock
    # (max_seconds 0), so the same seed gives the same SAE.
    return [SAEConfig(d_in=d, dict_size=m, arch=arch, k=k, lr=config.diffsae.lr, epochs=config.diffsae.epochs,
                      max_tokens=config.diffsae.max_tokens, max_seconds=0.0, batch_size=config.diffsae.batch_size,
                      seed=int(s), data_seed=int(s) ^ config.seed)
            for s in config.diffsae.seeds]


def train_diff_saes(delta: ActivationStore, layer: int, config: DecomposeConfig,
                    out_dir: str | os.PathLike | None = None, quiet: bool = True) -> list:
    """The diff-SAEs of `config.diffsae.seeds` on `layer` of the Δ store (written to out_dir/seed{s} when given:
    a rerun loads finished ones)."""
    from ..sae import train_saes

    check_decompose_config(config)
    configs = diffsae_configs(delta.d, config)
    dirs = [Path(out_dir) / f"seed{c.seed}" for c in configs] if out_dir is not None else None
    return train_saes(delta.source(layer), configs, dirs, metadata={"delta": delta.manifest.get("delta")},
                      quiet=quiet)


@torch.no_grad()
def decoder_rows(sae) -> torch.Tensor:
    """[m, d]: what one unit of each code adds to the reconstruction (independent of how the SAE stores it)."""
    m = int(sae.cfg.dict_size)
    return sae.decode(torch.eye(m)) - sae.decode(torch.zeros(1, m))


@torch.no_grad()
def latent_stats(sae, store: ActivationStore, layer: int) -> dict:
    """One pass over the rows: per latent the summed |f_j d_j|^2, summed f_j |d_j| and firing count; the summed
    |Δ|^2, the summed |Δ - mean Δ|^2 (`centred_sq`), the summed squared reconstruction error, the mean Δ vector and
    the mean per-row |Δ| (tensors/floats)."""
    rows = decoder_rows(sae)
    norms = rows.norm(dim=1).double()
    m, d = rows.shape
    sq, contribution = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    fired = torch.zeros(m, dtype=torch.int64)
    total = err = row_norm = 0.0
    sum_x = torch.zeros(d, dtype=torch.float64)
    n = 0
    for shard in store.iter_shards(layer):
        for lo in range(0, len(shard.acts), ROWS_PER_CHUNK):
            x = shard.acts[lo:lo + ROWS_PER_CHUNK]
            x_hat, f = sae(x)
            f = f.double()
            sq += (f.pow(2) * norms.pow(2)).sum(0)
            contribution += (f.abs() * norms).sum(0)
            fired += (f != 0).sum(0)
            total += float(x.double().pow(2).sum())
            err += float((x_hat - x).double().pow(2).sum())
            row_norm += float(x.double().norm(dim=1).sum())
            sum_x += x.double().sum(0)
            n += len(x)
    if n == 0:
        raise UserError(f"the store {store.path} holds no rows")
    centred = max(total - float(sum_x.pow(2).sum()) / n, 0.0)  # sum |x - mean|^2 = sum |x|^2 - |sum x|^2 / n
    return {"sq": sq, "contribution": contribution, "fired": fired, "total_sq": total, "centred_sq": centred,
            "error_sq": err, "n": n,
            "mean_delta": (sum_x / n).float(), "mean_row_norm": row_norm / n, "rows": rows}


def shares(stats: dict) -> torch.Tensor:
    """[m]: each latent's share of the summed squared norm of Δ (0 when Δ is zero everywhere)."""
    total = stats["total_sq"]
    return stats["sq"] / total if total > 0 else torch.zeros_like(stats["sq"])


def seed_agreement(saes: list, latents: list[list[int]]) -> list[list[dict]]:
    """For each SAE s and each of its `latents[s]`: the max cosine of that decoder row to the decoder rows of the
    other SAEs (max over them), with the seed index and latent where it is reached; [] entries with one SAE."""
    from ..dictionaries import max_cosine_any

    if len(saes) < 2:
        return [[] for _ in saes]
    rows = [decoder_rows(s) for s in saes]
    out = []
    for i, chosen in enumerate(latents):
        others = [r for j, r in enumerate(rows) if j != i]
        other_index = [j for j in range(len(rows)) if j != i]
        if not chosen:
            out.append([])
            continue
        values, which, match = max_cosine_any(rows[i][chosen], others)
        out.append([{"cosine": float(v), "sae": other_index[int(w)], "latent": int(j)}
                    for v, w, j in zip(values, which, match)])
    return out


def top_latents(stats: dict, n: int) -> list[dict]:
    """The `n` latents with the largest share, best first (latents that never fired are left out)."""
    share = shares(stats)
    order = torch.argsort(share, descending=True).tolist()
    out = []
    for j in order:
        fired = int(stats["fired"][j])
        if len(out) >= n:
            break
        if fired == 0:
            continue
        out.append({"latent": int(j), "share": float(share[j]), "firing_rate": fired / stats["n"],
                    "mean_contribution": float(stats["contribution"][j]) / fired})
    return out


def diff_sae(delta: ActivationStore | str | os.PathLike, layer: int, config: DecomposeConfig | None = None,
             out_dir: str | os.PathLike | None = None, quiet: bool = True) -> tuple[dict, list]:
    """Train the diff-SAEs on `layer` of the Δ store, rank each one's latents by share of |Δ|^2 and check the top
    latents' seed agreement. Returns (the JSON-able result, the SAEs in seed order); keys in docs/diff.md."""
    from .paired_store import open_store

    config = config or DecomposeConfig()
    check_decompose_config(config)
    delta = open_store(delta)
    saes = train_diff_saes(delta, layer, config, out_dir, quiet)
    stats = [latent_stats(sae, delta, layer) for sae in saes]
    tops = [top_latents(s, config.diffsae.top) for s in stats]
    agreement = seed_agreement(saes, [[t["latent"] for t in top] for top in tops])
    per_sae = []
    for sae, stat, top, agree in zip(saes, stats, tops, agreement):
        for entry, a in zip(top, agree):
            entry["agreement"] = a["cosine"]
            entry["agreement_match"] = {"seed": int(saes[a["sae"]].cfg.seed), "latent": a["latent"]}
        if not agree:
            for entry in top:
                entry["agreement"], entry["agreement_match"] = None, None
        total, centred = stat["total_sq"], stat["centred_sq"]
        metrics = sae.metrics or {}
        # explained = 1 - FVU: the error against the spread of Δ about its mean (the decoder bias alone explains
        # nothing), as the FVU of every other SAE; the uncentred share beside it for older readings
        per_sae.append({"seed": int(sae.cfg.seed), "data_seed": int(sae.cfg.data_seed),
                        "explained": 1 - stat["error_sq"] / centred if centred > 0 else None,
                        "explained_uncentred": 1 - stat["error_sq"] / total if total > 0 else None,
                        "stop_reason": metrics.get("stop_reason"), "converged": metrics.get("converged"),
                        "tokens_seen": metrics.get("tokens_seen"),
                        "mean_l0": metrics.get("mean_l0"),
                        "dead_fraction": float((stat["fired"] == 0).float().mean()),
                        "top_share": float(sum(t["share"] for t in top)),
                        "bias_norm": float(sae.b_dec.detach().norm()) if hasattr(sae, "b_dec") else None,
                        "top": top})
    first = stats[0]
    top0 = per_sae[0]["top"]
    cosines = [t["agreement"] for t in top0 if t["agreement"] is not None]
    cfg0 = saes[0].cfg
    result = {
        "layer": int(layer), "arch": cfg0.arch, "k": cfg0.k, "dict_size": int(cfg0.dict_size), "d": int(delta.d),
        "seeds": [int(s.cfg.seed) for s in saes], "n_rows": first["n"], "total_sq_norm": first["total_sq"],
        "mean_delta_norm": float(first["mean_delta"].norm()), "mean_row_norm": first["mean_row_norm"],
        "saes": per_sae, "top": top0,
        "agreement": None if not cosines else {"mean": float(np.mean(cosines)), "min": float(np.min(cosines)),
                                               "above_0.9": int(sum(c > 0.9 for c in cosines)), "n": len(cosines)},
    }
    return result, saes


def steering_vectors(result: dict, saes: list, config: DecomposeConfig) -> tuple[torch.Tensor, list[int]]:
    """[n, d] vectors for the first `config.steer.latents` top latents of the first SAE: the unit decoder row times
    the latent's mean contribution (steer.norm contribution) or |mean Δ| (delta), times steer.alpha."""
    rows = decoder_rows(saes[0])
    latents = [t["latent"] for t in result["top"][:config.steer.latents]]
    vectors = []
    for t in result["top"][:config.steer.latents]:
        unit = rows[t["latent"]] / rows[t["latent"]].norm().clamp(min=1e-12)
        norm = t["mean_contribution"] if config.steer.norm == "contribution" else result["mean_delta_norm"]
        vectors.append(unit * norm * config.steer.alpha)
    return (torch.stack(vectors) if vectors else torch.zeros(0, rows.shape[1])), latents


def steer_latents(base, tokenizer, reward, prompts: list[list[int]], layer: int, vectors: torch.Tensor,
                  labels: list, n_random: int = 19, new_tokens: int = 16, seed: int = 0, level: float = 0.05,
                  base_result=None, top_tokens: int = 10, watch_ids: list[int] | None = None) -> dict:
    """Steer `base` at block `layer` by each row of `vectors` and by `n_random` random directions matched on the
    KL that row causes (teacher-forced on the prompts: diff/steering.py `kl_matched`), all on the same prompts and
    random numbers. Per vector: reward, paired gain over base, KL to base, and the test against its random
    directions (diff/vector_test.py: paired sign flips and rank, Holm across the vectors of this block, a claim
    when the adjusted p <= `level`), and the tokens it promotes (KL share). With `watch_ids` (e.g. the tokens of the
    words a reward lists), also the mean over them of the log-probability change against base on the sampled
    positions, for the vector and for each random direction: a far less noisy reading than the sampled reward."""
    from ..diff import steering
    from ..diff.vector_test import adjust, describe, vector_test
    from ..progress import progress_bar

    d = int(base.config.hidden_size)
    if vectors.shape[-1] != d:
        raise UserError(f"steering vectors have width {vectors.shape[-1]} but block outputs have {d}")
    targets = steering.steered_kl(base, prompts, layer, vectors).tolist() if len(vectors) else []
    groups, matched, k = [], [], 1 + n_random
    for i, (v, target) in enumerate(zip(vectors, targets)):
        randoms, kls = steering.kl_matched(base, prompts, layer, target, n_random, seed, salt=1000 * (i + 1),
                                           start_norm=float(v.norm()))
        matched.append({"target_kl": target, "norms": randoms.norm(dim=1).tolist(), "matched_kl": kls.tolist()})
        groups += [{layer: v}] + [{layer: r} for r in randoms]
    with progress_bar() as bar:
        task = bar.add_task(f"decompose: steering by {len(vectors)} latent(s) of block {layer}",
                            total=len(groups) + (base_result is None))

        def advance(n: int) -> None:
            bar.update(task, advance=n)

        if base_result is None:
            base_result = steering.run_groups(base, base, tokenizer, reward, prompts, [{}], new_tokens, seed,
                                              advance)[0]
        results = steering.run_groups(base, base, tokenizer, reward, prompts, groups, new_tokens, seed,
                                      advance) if groups else []
    base_mean, base_se = steering.mean_se(base_result.rewards)
    rows = []
    for i, (v, label) in enumerate(zip(vectors, labels)):
        r, rand = results[i * k], results[i * k + 1:(i + 1) * k]
        mean, se = steering.mean_se(r.rewards)
        gain, gain_se = steering.mean_se(r.rewards - base_result.rewards)
        test = vector_test(r.rewards, np.stack([x.rewards for x in rand]), seed=seed + i)
        test["null"].update(kl=[x.kl for x in rand], **matched[i])
        null = test.pop("null")
        ids = torch.topk(r.share, top_tokens).indices.tolist()
        rows.append({"label": label, "norm": float(v.norm()), "reward": mean, "se": se, "gain": gain,
                     "gain_se": gain_se, "kl": r.kl, "null": null, "z": test["z"], "gain_vs_null": mean - null["mean"],
                     "test": test, "top_token_ids": ids, "top_tokens": [tokenizer.decode([i]) for i in ids]})
        if watch_ids:
            watch = torch.tensor(watch_ids, dtype=torch.long)
            rows[-1]["watched"] = {"change": float(r.change[watch].mean()),
                                   "null": [float(x.change[watch].mean()) for x in rand]}
    adjust([row["test"] for row in rows], level)
    family = f"{len(rows)} latents of block {layer}"
    for row in rows:
        t = row["test"]
        row["beats_null"] = t["claim"] == "raises"
        said = f"steering by it {t['direction']} the reward" if t["claim"] else \
            "no change distinguishable from random directions matched on KL"
        row["verdict"] = f"{said} ({describe(t, level, family)})"
    return {"layer": int(layer), "n_prompts": len(prompts), "new_tokens": new_tokens, "n_random": n_random,
            "level": level, "null": "random directions matched on the KL each vector causes (teacher-forced)",
            "base": {"reward": base_mean, "se": base_se}, "latents": rows}


def steer_top_latents(result: dict, saes: list, base, tokenizer, reward, prompts: list[list[int]],
                      config: DecomposeConfig | None = None, new_tokens: int = 16, layer: int | None = None,
                      base_result=None, watch_ids: list[int] | None = None) -> dict:
    """`steer_latents` for the top latents of a `diff_sae` result (at its layer unless `layer` is given); the
    returned dict also names `steer_norm` and `alpha`. Store it as result["steering"]."""
    config = config or DecomposeConfig()
    vectors, latents = steering_vectors(result, saes, config)
    out = steer_latents(base, tokenizer, reward, prompts, result["layer"] if layer is None else layer, vectors,
                        latents, config.steer.random, new_tokens, config.seed, config.level, base_result=base_result,
                        watch_ids=watch_ids)
    for row in out["latents"]:
        row["latent"] = row.pop("label")
    out.update(steer_norm=config.steer.norm, alpha=config.steer.alpha)
    return out
