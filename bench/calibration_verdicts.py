"""The calibration bench's adapters (bench/calibration.py): each runs one of the project's verdicts, through its
public function and with the tool's own test, and says whether it claimed a change beyond its null.

An adapter returns {"claimed": bool, "positive": bool, "p": float | None, "text": str}: `claimed`, any claim
beyond the null (either sign: a null change should give none); `positive`, a claim that the change carries the
reward (what a planted VADER direction should give).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REWARD = "vader"


@dataclass
class Settings:
    """Small, but the same tests as the tool: 19 random directions (p floor 0.05), level 0.05."""

    layers: list[int] = field(default_factory=lambda: [2])
    """Analysed blocks of the diff (steering and lens per block, Holm across them). One: with Holm across m blocks a
    claim needs 20m - 1 random directions (p floor m/(n+1)), and each direction is a sampled group."""
    rank_layers: list[int] = field(default_factory=lambda: [0, 1])
    """Blocks of the causal ranking (the changed blocks of the direction and planted cases are among them)."""
    rank_random: int = 39
    """Random directions per ranked block: Holm across 2 blocks needs 39 for a p floor of 0.05."""
    docs: int = 24
    tokens: int = 48
    prompts: int = 16
    new_tokens: int = 12
    alphas: list[float] = field(default_factory=lambda: [0.0, 1.0])
    """α = 1: base steered by Δ_L itself (a grid of one keeps the bench's cost down; the tool's α choice is not
    exercised)."""
    random: int = 19
    null_sets: int = 500
    latents: int = 1
    """diff-SAE latents steered (its top latent)."""
    shift_layer: int = 2
    """Block of the stores read by the shared-dictionary shift and the diff-SAE (the last)."""


def diff_config(settings: Settings, seed: int):
    from rlhf_lens.diff import DiffConfig

    return DiffConfig(max_docs=settings.docs, max_tokens=settings.tokens, prompts=settings.prompts,
                      new_tokens=settings.new_tokens, alphas=list(settings.alphas),
                      random_directions=settings.random, rank_random=settings.rank_random,
                      rank_layers=list(settings.rank_layers), null_sets=settings.null_sets, contexts=0, save_activations=True, seed=seed)


def decompose_config(settings: Settings, seed: int):
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings, SteerSettings

    return DecomposeConfig(seed=seed, explain_top=0,
                           diffsae=DiffSAESettings(seeds=[0], k=4, expansion=2.0, top=5),
                           steer=SteerSettings(latents=settings.latents, random=settings.random))


def run_diff(world, case, settings: Settings, out: Path) -> dict:
    """`diff_models` of the case's tuned model against the base (models passed in: nothing reloaded)."""
    from rlhf_lens.diff.run import diff_models

    return diff_models(world.model_dir, f"{world.model_dir}-{case.kind}-{case.seed}", world.corpus, REWARD,
                       settings.layers, out, diff_config(settings, case.seed),
                       models=(world.base, case.model, world.tokenizer))


def _verdict(text: str, positive: str, negative: str, p: float | None = None) -> dict:
    pos, neg = bool(re.search(positive, text)), bool(re.search(negative, text))
    return {"claimed": pos or neg, "positive": pos, "p": p, "text": text}


# --- verdicts read from diff.json ------------------------------------------------------------


def output_verdict(diff: dict) -> dict:
    """Promoted words: do the tokens tuning promotes carry more utility than random token sets?"""
    section = diff["output"]
    p = (section.get("promoted_null") or {}).get("p")
    return _verdict(section["verdict"], r"promotes reward-laden words",
                    r"promotes words the reward penalises|demotes words the reward penalises", p)


def _from_tests(tests: list[dict], text: str) -> dict:
    """A verdict from the shared vector test's results (diff/vector_test.py: `claim` "raises" / "lowers" / None,
    after Holm across the family)."""
    claims = [t.get("claim") for t in tests]
    ps = [t.get("p_adjusted", t.get("p")) for t in tests]
    return {"claimed": any(claims), "positive": "raises" in claims,
            "p": min((x for x in ps if x is not None), default=None), "text": text}


def steering_verdict(diff: dict) -> dict:
    """Steering base by α·Δ_L at every analysed block (any block's claim counts)."""
    curves = diff["steering"]
    text = " | ".join(c["verdict"] for c in curves)
    if any("test" in c for c in curves):  # the KL-matched paired + rank test, Holm across blocks
        return _from_tests([c["test"] for c in curves if c.get("test")], text)
    return _verdict(text, r"raises the reward", r"lowers the reward")


def lens_verdict(diff: dict) -> dict:
    """The logit lens of Δ_L at every analysed block."""
    texts = [c["lens"]["verdict"] for c in diff["steering"]]
    return _verdict(" | ".join(texts), r"reads reward-laden words", r"reads words the reward penalises")


def ranking_verdict(diff: dict) -> dict:
    """Causal ranking: does some block's own change raise the reward beyond its random directions?"""
    text = diff["ranking"]["verdict"]
    claimed = not text.lower().startswith("no ")  # "no block's own change raises the reward ..." claims nothing
    return {"claimed": claimed, "positive": claimed and "raises" in text, "p": None, "text": text}


# --- verdicts of the decompose stage -----------------------------------------------------------


def shift_verdict(sae, base_store, tuned_store, settings: Settings, seed: int) -> dict:
    """Shared-dictionary shift: does any latent of the base SAE shift beyond the null?"""
    from rlhf_lens.decompose.shift import shared_dictionary_shift

    result = shared_dictionary_shift(sae, base_store, tuned_store, settings.shift_layer,
                                     decompose_config(settings, seed))
    n = int(result["n_shifted"])
    return {"claimed": n > 0, "positive": n > 0, "p": None,
            "text": f"{n} of {result['n_latents']} latents shift beyond the null"}


def diffsae_verdict(world, base_store, tuned_store, settings: Settings, seed: int, out: Path, prompts) -> dict:
    """diff-SAE latent steering: does steering base by a top latent of the diff-SAE raise the reward beyond its
    random directions?"""
    from rlhf_lens.decompose.diffsae import diff_sae, steer_top_latents
    from rlhf_lens.decompose.paired_store import delta_store
    from rlhf_lens.rewards import load_reward

    dc = decompose_config(settings, seed)
    delta = delta_store(base_store, tuned_store, settings.shift_layer, out / "delta")
    result, saes = diff_sae(delta, settings.shift_layer, dc, out_dir=out / "diffsae")
    steered = steer_top_latents(result, saes, world.base, world.tokenizer, load_reward(REWARD), prompts, dc,
                                new_tokens=settings.new_tokens)
    rows = steered["latents"]
    if any("test" in r for r in rows):  # the KL-matched paired + rank test, Holm across latents
        return _from_tests([r["test"] for r in rows], " | ".join(r.get("verdict", "") for r in rows))
    up = [r for r in rows if r.get("beats_null") and r["gain"] > 0]
    down = [r for r in rows if r.get("beats_null") and r["gain"] <= 0]
    ps = [r.get("p_adjusted", r.get("p")) for r in rows]
    p = min((x for x in ps if x is not None), default=None)
    text = (f"{len(up)} of {len(rows)} top latents raise the reward beyond their random directions"
            + (f", {len(down)} lower it" if down else ""))
    return {"claimed": bool(up or down), "positive": bool(up), "p": p, "text": text}


def swapped_stores(base_store, tuned_store, layer: int, out: Path, seed: int) -> dict[str, str]:
    """The shift's exact null: per document, base and tuned rows exchanged with probability 1/2 (seeded), so the
    two stores are exchangeable within every document, as the document-level test assumes under no change."""
    from rlhf_lens.decompose.paired_store import iter_paired, open_store
    from rlhf_lens.diff.paired import write_pair_stores

    base, tuned = open_store(base_store), open_store(tuned_store)
    rows_b, rows_t, ids, docs = [], [], [], []
    for sb, st in iter_paired(base, tuned, layer):
        rows_b.append(sb.acts)
        rows_t.append(st.acts)
        ids.append(sb.token_ids)
        docs.append(sb.doc)
    hb, ht, token_ids, doc = torch.cat(rows_b), torch.cat(rows_t), torch.cat(ids), torch.cat(docs)
    swap = torch.from_numpy(np.random.default_rng([seed, 0x5A9]).random(base.n_docs) < 0.5)[doc.long()]
    hb2, ht2 = torch.where(swap[:, None], ht, hb), torch.where(swap[:, None], hb, ht)
    doc_tokens = [token_ids[doc == k].tolist() for k in range(base.n_docs)]
    written = {"model", "layers", "site", "dtype", "shard_tokens", "n_docs", "d", "format", "version", "shards",
               "n_tokens", "complete", "model_fingerprint"}
    meta = {k: v for k, v in base.manifest.items() if k not in written}
    pair = SimpleNamespace(acts={layer: (hb2, ht2)}, docs=doc_tokens)
    return write_pair_stores(out, pair, {"base": base.manifest["model"], "tuned": tuned.manifest["model"]}, meta)


def train_base_sae(world, settings: Settings, out: Path):
    """The base model's SAE at the shift's block, trained once on its residual stream over train documents (the
    project's train_saes)."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff.paired import paired_pass, tokenize_pair
    from rlhf_lens.sae import SAEConfig, train_saes
    from rlhf_lens.sources import TensorSource

    texts = load_corpus(world.corpus).texts("train", 200, seed=7)
    docs = tokenize_pair(world.tokenizer, world.tokenizer, texts, settings.tokens)
    pair = paired_pass(world.base, world.base, docs, int(world.tokenizer.pad_token_id), 16,
                       save_layers=[settings.shift_layer])
    rows = pair.acts[settings.shift_layer][0]
    d = int(rows.shape[1])
    cfg = SAEConfig(d_in=d, dict_size=4 * d, arch="topk", k=8, epochs=20, holdout=0, seed=0)
    return train_saes(TensorSource(rows), [cfg], [out], quiet=True)[0]


# --- the utility of the change against placebo tunes (its test alone) ---------------------------


def placebo_verdict(real: list[float], placebos: list[list[float]], level: float = 0.05) -> dict:
    """The headline's "utility of the change" against the placebo tune(s): `real`, the diff-SAE seeds' utilities
    of the real tune; `placebos`, per placebo tune its seeds' utilities. With `decompose.run.placebo_comparison`
    (the prediction-interval t test over placebo seeds): that test on the seed means; before it (main at bf735de):
    the report's rule, "above the placebo by more than twice the combined diff-SAE seed spread"."""
    try:
        from rlhf_lens.decompose.run import placebo_comparison
    except ImportError:
        from rlhf_lens.interp.utility import mean_std
        from rlhf_lens.report.decompose import change_utility_row

        pooled = [u for seeds in placebos for u in seeds]
        row = change_utility_row({"utility_of_change": mean_std(real)}, {"utility_of_change": mean_std(pooled)})
        return _verdict(str(row[-1]), r"^above", r"^below")
    result = placebo_comparison(float(np.mean(real)), [float(np.mean(s)) for s in placebos], level)
    beyond = bool(result["beyond"])  # one-sided: "beyond the placebo tunes", above them
    return {"claimed": beyond, "positive": beyond, "p": result["p"], "text": result["verdict"]}


def placebo_seeds_default() -> int:
    """Placebo tunes per case: 3 (the paper presets' controls.placebo_seeds) where the t test exists, else the one
    placebo tune main ran."""
    try:
        from rlhf_lens.decompose.run import placebo_comparison  # noqa: F401
    except ImportError:
        return 1
    return 3
