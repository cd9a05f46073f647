"""Shared-dictionary shift: one SAE (the base model's) encodes both models' activations on the same tokens;
the latents whose mean activation or firing rate moves are the change, and they come already explained by the
base SAE's feature records (the reading of OpenAI's persona-features work, on this project's stores).

Test, per latent: the paired rows are grouped by document; per document the summed (tuned - base) code of the
latent (and the summed change of its firing indicator). Under "tuning did not move this latent" swapping base and
tuned inside a document is as likely as not, i.e. each document's sum is as likely to have either sign: a
document-level sign-flip test (`nulls.sign_flip_z`: z = sum / sqrt(sum of squares), two-sided normal p). Tokens
of one document are not independent, documents are, so the unit is the document. The p-values are adjusted by
Benjamini-Hochberg across the latents (`nulls.benjamini_hochberg`); a latent is shifted when its q <= the
config's `level` (false-discovery rate). The same for the firing rate (`rate_shifted`).

Output format: docs/diff.md, section "Shared-dictionary shift".
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..nulls import benjamini_hochberg, sign_flip_z
from ..store import ActivationStore
from .config import DecomposeConfig, check_decompose_config

ROWS_PER_CHUNK = 8192
TEST = ("document-level sign-flip test of each latent's summed tuned - base code per document (swap base and "
        "tuned within a document), two-sided; Benjamini-Hochberg across latents")


@torch.no_grad()
def shift_stats(sae, base: ActivationStore, tuned: ActivationStore, layer: int) -> dict:
    """One pass over the paired rows: per latent the summed codes and firing counts of base and tuned, and per
    document the summed (tuned - base) code and firing change (`doc_code`, `doc_fire`: [n_docs, m] float64;
    memory n_docs * m * 16 bytes)."""
    from .paired_store import iter_paired

    m = int(sae.cfg.dict_size)
    shards = base.manifest["shards"]
    n_docs = max(base.n_docs, int(shards[-1]["doc_end"]) if shards else 0)  # doc ids index the split
    sums = {key: torch.zeros(m, dtype=torch.float64) for key in ("base", "tuned", "fire_base", "fire_tuned")}
    doc_code = torch.zeros(n_docs, m, dtype=torch.float64)
    doc_fire = torch.zeros(n_docs, m, dtype=torch.float64)
    n = 0
    for sb, st in iter_paired(base, tuned, layer):
        for lo in range(0, len(sb.doc), ROWS_PER_CHUNK):
            part = slice(lo, lo + ROWS_PER_CHUNK)
            fb, ft = sae.encode(sb.acts[part]).double(), sae.encode(st.acts[part]).double()
            firing_b, firing_t = (fb != 0).double(), (ft != 0).double()
            sums["base"] += fb.sum(0)
            sums["tuned"] += ft.sum(0)
            sums["fire_base"] += firing_b.sum(0)
            sums["fire_tuned"] += firing_t.sum(0)
            doc = sb.doc[part].long()
            doc_code.index_add_(0, doc, ft - fb)
            doc_fire.index_add_(0, doc, firing_t - firing_b)
            n += len(fb)
    return {**sums, "doc_code": doc_code, "doc_fire": doc_fire, "n": n}


def latent_tests(per_doc: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, p, q) per latent of per-document summed changes [n_docs, m]: the sign-flip z and its two-sided p
    (`nulls.sign_flip_z`), and the Benjamini-Hochberg q across latents."""
    z, p = sign_flip_z(per_doc.numpy())
    return z, p, benjamini_hochberg(p)


def shared_dictionary_shift(sae, base_store: ActivationStore | str | os.PathLike,
                            tuned_store: ActivationStore | str | os.PathLike, layer: int,
                            config: DecomposeConfig | None = None) -> dict:
    """Encode both stores' `layer` (same tokens) with the base SAE `sae`; per latent the change of mean activation
    and of firing rate, each tested by a document-level sign flip with Benjamini-Hochberg across latents at
    `config.level`; the top latents by `config.shift.rank_by`. Keys in docs/diff.md."""
    from .paired_store import open_store

    config = config or DecomposeConfig()
    check_decompose_config(config)
    base, tuned = open_store(base_store), open_store(tuned_store)
    s = shift_stats(sae, base, tuned, layer)
    n = max(s["n"], 1)
    mean_b, mean_t = s["base"] / n, s["tuned"] / n
    rate_b, rate_t = s["fire_base"] / n, s["fire_tuned"] / n
    change, rate_change = mean_t - mean_b, rate_t - rate_b
    z, p, q = latent_tests(s["doc_code"])
    rate_z, rate_p, rate_q = latent_tests(s["doc_fire"])
    shifted = torch.from_numpy(q <= config.level)
    rate_shifted = torch.from_numpy(rate_q <= config.level)
    key = change.abs() if config.shift.rank_by == "mean" else torch.from_numpy(np.abs(z))
    order = torch.argsort(key, descending=True, stable=True).tolist()
    top = [{"latent": int(j), "mean_base": float(mean_b[j]), "mean_tuned": float(mean_t[j]),
            "mean_change": float(change[j]), "rate_base": float(rate_b[j]), "rate_tuned": float(rate_t[j]),
            "rate_change": float(rate_change[j]), "z": float(z[j]), "p": float(p[j]), "q": float(q[j]),
            "rate_z": float(rate_z[j]), "rate_p": float(rate_p[j]), "rate_q": float(rate_q[j]),
            "shifted": bool(shifted[j]), "rate_shifted": bool(rate_shifted[j])}
           for j in order[:config.shift.top] if key[j] > 0]
    docs_used = int((s["doc_code"].abs().sum(1) > 0).sum())
    return {"layer": int(layer), "n_rows": s["n"], "n_docs": base.n_docs, "n_docs_changed": docs_used,
            "n_latents": int(sae.cfg.dict_size), "test": TEST, "level": config.level,
            "rank_by": config.shift.rank_by,
            "n_shifted": int(shifted.sum()), "n_rate_shifted": int(rate_shifted.sum()),
            "n_rising": int((shifted & (change > 0)).sum()), "n_falling": int((shifted & (change < 0)).sum()),
            "min_q": float(q.min()) if len(q) else None, "top": top}


def count_among(result: dict, features: list[int]) -> dict:
    """How many of the listed top latents that count as shifted are among `features` (e.g. the top-MMCS features
    the interpretation stage explained): {"count", "of", "latents", "features"}."""
    wanted = {int(f) for f in features}
    shifted = [t["latent"] for t in result["top"] if t["shifted"]]
    both = [j for j in shifted if j in wanted]
    return {"count": len(both), "of": len(shifted), "latents": both, "features": len(wanted)}
