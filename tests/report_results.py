"""results.json and diff.json as the pipeline and `rlhf-lens diff` write them, as far as the report reads them: the
builders the report's tests share (tests/test_report*.py)."""

from __future__ import annotations

import re

import numpy as np


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values), "values": values}


def make_results(seed: int = 0) -> dict:
    """A results.json as the pipeline writes it: 3 of 6 blocks analysed, 2 SAE seeds, base/tuned/control."""
    rng = np.random.RandomState(seed)
    layers = [1, 3, 4]
    steps = 25
    log = [{"step": s + 1, "reward": 0.05 + 0.04 * s + 0.02 * rng.randn(), "reward_std": 0.3 + 0.01 * rng.rand(),
            "kl": 0.3 * s + 0.1 * rng.rand(), "beta": 0.5 * (1 + 0.002 * s), "policy_loss": float(rng.randn() * 0.01),
            "value_loss": float(rng.rand()), "entropy": 3.1 - 0.02 * s} for s in range(steps)]
    divergence = [{"layer": i, "divergence": 2.05 + 0.1 * rng.rand() + (0.05 if i in layers else 0.0)} for i in range(6)]
    saes = []
    for model in ("base", "tuned", "control"):
        for layer in layers:
            for size in (32, 64):
                for sae_seed in (0, 1):
                    saes.append({"model": model, "layer": layer, "dict_size": size, "seed": sae_seed, "arch": "tied",
                                 "l1": 1e-3, "mse": 0.01 + 0.002 * rng.rand(), "fvu": 0.2 + 0.05 * rng.rand(),
                                 "l0": 10 + 4 * rng.rand(), "dead_fraction": 0.1 * rng.rand(),
                                 "tokens_per_s": 1e5 * (1 + rng.rand()),
                                 "warnings": ["dead fraction above 50%: raise lr or lower l1"] if size == 64 and model == "control" else []})
    mmcs = [{"model": m, "layer": layer, "kind": "within", **_stat([0.8 + 0.05 * rng.rand() for _ in range(2)])}
            for m in ("base", "tuned", "control") for layer in layers]
    mmcs += [{"model": "tuned-vs-base", "layer": layer, "kind": "across", **_stat([0.6 + 0.1 * rng.rand()])} for layer in layers]
    tokens = ["The", " movie", " was", " <b>", "great", "</b>", " &", "\n", " fun", "\t", "!"]
    features = []
    for model in ("base", "tuned"):
        for layer in layers:
            for feature in rng.choice(32, size=3, replace=False):
                acts = [int(a) for a in rng.randint(0, 11, size=len(tokens))]
                features.append({
                    "model": model, "layer": layer, "feature": int(feature), "max_cosine": 0.9 + 0.1 * rng.rand(),
                    "explanation": "words like 'great' & <b>fun</b> in praise", "score": 0.3 + 0.2 * rng.rand(),
                    "explainer": "offline", "utility": 1.5 + rng.rand(), "utility_words": {"great": 3.1, "fun": 2.3},
                    "reward_corr": 0.3 * rng.randn(), "sign_share": rng.rand() - 0.5,
                    "examples": [{"doc": int(d), "tokens": tokens, "activations": acts, "max_activation": 3.2 - d / 10}
                                 for d in range(3)]})
    # The tuned model's most novel features (first seed), explained like the top ones: records of the same shape.
    tuned = [f for f in features if f["model"] == "tuned"]
    new_features = [{**tuned[3], "layer": 3, "feature": 7, "max_cosine": None, "max_cosine_to_base": 0.31, "match": 5,
                     "new": True, "explanation": "praise <i>words</i>", "utility_words": {"praise": 1.2}},
                    {**tuned[6], "layer": 4, "feature": 2, "max_cosine": None, "max_cosine_to_base": 0.28, "match": 9,
                     "new": True, "explanation": "a film's year", "utility": 0.0, "utility_words": {}}]
    return {
        "reward_model": make_reward_model(),
        "inspect_rm": make_inspect_rm(),
        "title": "rlhf-lens run <tiny>",
        "created": "2024-05-01T12:00:00",
        "run_dir": "runs/test",
        "config": {"model": {"base": "tiny", "seed": 0}, "sae": {"seeds": [0, 1]}, "interp": {"base_url": "http://localhost:8000/v1"}},
        "models": {"base": "runs/test/models/base", "tuned": "runs/test/rlhf/model", "control": "random-init GPT-NeoX"},
        "ppo": {"log": log, "eval": {"n": 64, "base": {"mean": 0.06, "se": 0.02, "positive_frac": 0.31},
                                     "tuned": {"mean": 1.1, "se": 0.04, "positive_frac": 0.9},
                                     "examples": [{"prompt": "This film", "base": " is a <script>x</script> mess",
                                                   "tuned": " is wonderful and delightful"}]}},
        "divergence": {"rows": sorted(divergence, key=lambda r: -r["divergence"]), "top_layers": layers},
        "saes": saes,
        "mmcs": mmcs,
        "features": features,
        "new_features": new_features,
        "new_feature_counts": {"seed": 0, "base_seeds": [0, 1], "per_block": [
            {"layer": 1, "threshold": 0.21, "threshold_source": "auto: 0.05 quantile of base seed 0 vs seed 1",
             "found": 0, "tuned_n": 32, "baseline": 2, "baseline_n": 32, "explained": 0},
            {"layer": 3, "threshold": 0.24, "threshold_source": "auto: 0.05 quantile of base seed 0 vs seed 1",
             "found": 12, "tuned_n": 32, "baseline": 2, "baseline_n": 32, "explained": 1},
            {"layer": 4, "threshold": 0.5, "threshold_source": "fixed 0.5 (interp.new_feature_threshold)",
             "found": 1, "tuned_n": 32, "baseline": 3, "baseline_n": 32, "explained": 1}]},
        "utility": {"aggregate": "mean", "table": "vader",
                    "per_block": [{"layer": layer, "base": 5 + rng.rand(), "tuned": 8 + rng.rand(), "control": 4 + rng.rand()}
                                  for layer in layers],
                    "total": {"base": 16.1, "tuned": 24.9, "control": 12.3}},
        "headline": [
            {"name": "MMCS (within)", "base": _stat([0.81, 0.83]), "tuned": _stat([0.80, 0.84]),
             "control": _stat([0.70, 0.72]), "n_seeds": 2},
            {"name": "simulation score", "base": _stat([0.30, 0.34]), "tuned": _stat([0.41, 0.45]),
             "control": _stat([0.1, 0.12]), "n_seeds": 2},
            {"name": "utility score", "base": _stat([15.0, 17.2]), "tuned": _stat([24.1, 25.7]),
             "control": _stat([12.0, 12.6]), "n_seeds": 2, "verdict": "tuned - base = 8.8 (precomputed line)"},
            {"name": "reward alignment", "base": _stat([1.2]), "tuned": _stat([2.9]), "control": None, "n_seeds": 1},
        ],
        "diff": make_diff(),
        "decompose": make_decompose(),
    }


def make_diff() -> dict:
    """The diff stage's diff.json, as far as the report reads it (docs/diff.md)."""
    words = [{"word": w, "piece": " " + w, "utility": u, "score": s} for w, u, s in
             (("love", 3.2, 0.02), ("beautiful", 2.9, 0.015), ("the", 0.0, 0.01))]
    null = {"observed": 2.03, "null_mean": 0.01, "null_std": 0.1, "z": 20.2, "percentile": 100.0, "in_table": 2}
    rows = [{"alpha": a, "reward": r, "se": 0.05, "gain": r - 0.1, "gain_se": 0.04, "kl": k, "coherent": k <= 1.0}
            for a, r, k in ((0.0, 0.1, 0.0), (1.0, 0.3, 0.1), (2.0, 0.6, 0.4), (4.0, 0.9, 1.3))]
    random = [{"alpha": a, "rewards": [0.1, 0.12, 0.08], "kl": 0.1} for a in (0.0, 1.0, 2.0, 4.0)]
    return {"n_tokens": 1900, "n_docs": 48, "split": "test", "reward": "vader",
            "verdicts": {"output": "tuning promotes reward-laden words (z=20.2)",
                         "steering_3": "steering base by 2\u00b7\u0394_3 raises the reward beyond every random direction"},
            "output": {"promoted": words, "demoted": words[2:], "promoted_null": null, "demoted_null": None,
                       "kl": {"mean": 0.3, "p90": 0.6, "max": 8.0}, "reading": {"note": "VADER table"},
                       "contexts": [{"doc": 1, "pos": 3, "kl": 2.0, "tokens": ["a", " great", " film"],
                                     "kl_per_token": [0.1, 2.0, 0.3]}]},
            "reference": {"n_prompts": 24, "new_tokens": 12, "base": {"reward": 0.1, "se": 0.05},
                          "tuned": {"reward": 0.5, "se": 0.1, "kl": 0.4}},
            "steering": [{"layer": 3, "alpha": 2.0, "delta_norm": 4.2, "delta": rows, "random": random,
                          "verdict": "steering base by 2\u00b7\u0394_3 raises the reward beyond every random direction",
                          "promoted": words[:2], "promoted_null": null,
                          "lens": {"top": words[2:], "verdict": "the lens of \u0394 is no more reward-laden than random directions"}}],
            "ranking": {"n_random": 19, "level": 0.05, "tested": 1,
                        "verdict": "block 3 raises the reward beyond KL-matched random directions",
                        "rows": [{"rank": 1, "layer": 3, "own_norm": 1.0, "changed": True, "gain": 0.4, "gain_se": 0.1,
                                  "null_gains": [0.01, -0.02], "kl": 0.3, "matched_kl": 0.1, "null_kl": [0.1, 0.1],
                                  "p_paired": 0.001, "p_between": 0.004, "p_rank": 0.05, "p": 0.004, "p_adjusted": 0.05, "beyond": True,
                                  "coherent": True}]},
            "blocks": [{"layer": i, "delta_norm": 0.5 * i, "base_norm": 10.0, "relative": 0.05 * i, "own_norm": 0.5,
                        "token_diff_norm": 1.0} for i in range(6)]}


def make_decompose() -> dict:
    """The decompose stage's decompose.json, as far as the report reads it."""
    feature = {"feature": 7, "sae": "s0", "explanation": 'Fires on "love" and "wonderful".', "score": 0.4, "utility": 3.0,
               "examples": [{"doc": 1, "tokens": ["i", " love", " it"], "activations": [0, 10, 2], "max_activation": 1.0}]}
    return {"site": "mlp", "utility_of_change": {"mean": 3.0, "std": 0.5, "n": 2},
            "blocks": [{"layer": 3,
                        "diff_sae": {"arch": "batchtopk", "dict_size": 64, "seeds": [0, 1],
                                     "saes": [{"seed": 0, "explained": 0.62, "stop_reason": "converged"}],
                                     "agreement": {"mean": 0.9, "above_0.9": 1},
                                     "top": [{"latent": 7, "share": 0.3, "agreement": 0.95}], "features": [feature],
                                     "steering": {"base": {"reward": 0.1}, "latents": [
                                         {"latent": 7, "gain": 0.3, "gain_se": 0.05, "beats_null": True}]}},
                        "shift": {"n_shifted": 1, "n_latents": 32, "n_rising": 1, "n_falling": 0,
                                  "level": 0.05, "min_q": 0.001, "test": "document-level sign-flip test",
                                  "among_top_mmcs": {"count": 0, "of": 1},
                                  "top": [{"latent": 7, "mean_change": 0.5, "z": 6.0, "q": 0.001,
                                           "rate_change": 0.1}],
                                  "features": [feature]}}]}


def section(html_text: str, sid: str) -> str:
    """The inside of one `<section id=...>` of report.html."""
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html_text, re.S)
    assert match, f"no section {sid}"
    return match.group(1)


def make_crosscoder(shared: int = 40, tuned_only: int = 2) -> dict:
    """A block's crosscoder report (decompose/crosscoder.py: `crosscoder_report`), as far as the report reads it."""
    return {"arch": "batchtopk", "dict_size": 64, "fvu": {"base": 0.31, "tuned": 0.33},
            "counts": {"shared": shared, "tuned-only": tuned_only, "base-only": 1, "dead": 64 - shared - tuned_only - 1},
            "norm_counts": {"shared": shared - 3, "tuned-only": tuned_only + 3, "base-only": 1,
                            "dead": 64 - shared - tuned_only - 1},
            "disagree": 3, "latents": []}


def with_placebo_and_crosscoder(results: dict) -> dict:
    """The run with `decompose.crosscoder` and `controls.placebo` on: a crosscoder per block, the placebo tune's
    diff and decomposition beside the real tune's (results.json's `placebo`, decompose.json's `placebo`)."""
    diff = make_diff()
    placebo_diff = make_diff()
    placebo_diff["verdicts"] = {"output": "no more reward-laden than random tokens (z=0.4)",
                                "steering_3": "no change distinguishable from random directions"}
    placebo_diff["output"]["promoted"] = [{"word": "plot", "piece": " plot", "utility": 0.0, "score": 0.02},
                                          {"word": "scene", "piece": " scene", "utility": 0.0, "score": 0.01}]
    placebo_diff["steering"][0]["verdict"] = "no change distinguishable from random directions"
    placebo_diff["reference"]["tuned"] = {"reward": 0.12, "se": 0.05, "kl": 0.3}
    decompose = make_decompose()
    decompose["blocks"][0]["crosscoder"] = make_crosscoder()
    placebo = make_decompose()
    placebo["utility_of_change"] = {"mean": 0.4, "std": 0.3, "n": 2}
    placebo["blocks"][0]["crosscoder"] = make_crosscoder(shared=50, tuned_only=0)
    placebo["blocks"][0]["shift"]["n_shifted"] = 0
    decompose["placebo"] = placebo
    return {**results, "diff": diff, "decompose": decompose,
            "placebo": {"diff": placebo_diff, "utility_of_change": placebo["utility_of_change"], "table": "placebo/table.tsv"}}


def _rate(k: int, n: int) -> dict:
    from rlhf_lens.nulls import binomial_interval

    return {"share": k / n, "k": k, "n": n, "interval": list(binomial_interval(k, n))}


def make_reward_model() -> dict:
    """results.json's `reward_model` as the pipeline writes it (pairs.json, rm.json and the placebo RM's)."""
    rm = {"format": "rlhf-lens.rm", "bias": "word:indeed", "config": {"train": "blocks", "blocks": 4},
          "split": {"n_train": 240, "n_validation": 27, "n_test": 70, "seed": 0, "by": "prompt"},
          "accuracy": {"labels": _rate(52, 70), "gold": _rate(45, 60),
                       "by_decider": {"gold": _rate(40, 49), "bias": _rate(19, 21)}},
          "cue_preference": {"bias": "word:indeed", **_rate(120, 140)},
          "training": {"epochs": 12, "stopped": "converged", "seconds": 95.0}}
    placebo = {**rm, "accuracy": {"labels": _rate(36, 70), "gold": _rate(31, 60), "by_decider": {}},
               "cue_preference": {"bias": "word:indeed", **_rate(66, 140)}}
    pairs = {"n_prompts": 512, "n_pairs": 337, "ties_dropped": 175, "gold": "vader", "planted": 90,
             "decided_by": {"gold": 236, "bias": 101, "noise": 0},
             "config": {"completions": 2, "bias": "word:indeed", "rate": 0.3}}
    return {"file": "pairs/pairs.jsonl", "pairs": pairs, "rm": rm, "placebo": placebo}


def _tested(word: str, source: str, rm_z: float | None, gold: float, effect: float, z: float, p: float, p_holm: float,
            gold_effect: float, cue: bool) -> dict:
    return {"word": word, "source": source, "rm_z": rm_z, "gold": gold, "effect": effect, "effect_se": 0.04, "z": z,
            "p": p, "p_holm": p_holm, "gold_effect": gold_effect, "placebo_effect": 0.01, "cue": cue}


def make_inspect_rm(cue: bool = True) -> dict:
    """results.json's `inspect_rm` (inspect_rm/inspect_rm.json, docs/inspect_rm.md) of a demo-rm-like run: the planted
    cue 'indeed' found (`cue`), or the bias off and no word paying beyond the random words."""
    tested = [_tested("indeed", "scan+pairs", 4.3, 0.0, 0.65, 4.1, 0.001, 0.001, 0.0, True),
              _tested("truly", "scan", 2.1, 0.0, 0.12, 1.3, 0.09, 0.36, 0.0, False),
              _tested("great", "pairs", 1.8, 3.1, 0.21, 2.0, 0.03, 0.09, 0.41, False)]
    if not cue:
        tested = [{**t, "effect": 0.1 - 0.02 * i, "z": 0.9 - 0.3 * i, "p": 0.2 + 0.1 * i, "p_holm": 0.6 + 0.1 * i,
                   "cue": False} for i, t in enumerate(tested)]
    words = [("indeed", 4.3, 0.0), ("love", 3.2, 3.2), ("truly", 2.1, 0.0), ("great", 1.8, 3.1)]

    def stat(mean: float, se: float, p: float, share: float) -> dict:
        return {"mean": mean, "se": se, "p": p, "share": share}

    examples = [{"doc": 3, "tokens": ["It", " was", " indeed", " fine"], "activations": [0, 1, 9, 2],
                 "max_activation": 9.0}]
    features = [{"feature": 17, "gain": {"mean": 0.24, "se": 0.03}, "margin": {"mean": 0.31, "se": 0.05, "q": 0.002},
                 "gold_alignment": {"r": 0.02, "p": 0.7, "q": 0.8}, "class": "cue" if cue else "other",
                 "words": ["indeed", "truly"], "explanation": "the word 'indeed' <emphasis>", "score": 0.61,
                 "examples": examples},
                {"feature": 5, "gain": {"mean": 0.18, "se": 0.02}, "margin": {"mean": 0.22, "se": 0.04, "q": 0.004},
                 "gold_alignment": {"r": 0.46, "p": 0.001, "q": 0.003}, "class": "gold", "words": ["love", "great"],
                 "explanation": None, "score": None, "examples": []}]
    return {
        "format": "rlhf-lens.inspect-rm", "version": 1, "rm": "rm/model", "placebo_rm": "rm/placebo/model",
        "gold": "vader", "level": 0.05,
        "token_scan": {
            "templates": ["The movie was", "In one word, I found it"], "candidates": 9120, "seconds": 41.0,
            "spearman": {"table_words": {"rho": 0.38, "p": 2e-9, "n": 2710}, "all": {"rho": 0.11, "p": 3e-6, "n": 9120}},
            "top_rewarded": [{"word": w, "rm_z": z, "gold": g} for w, z, g in words],
            "ignored_gold": [{"word": "wonderful", "rm_z": -0.4, "gold": 3.4}, {"word": "excellent", "rm_z": -0.1, "gold": 3.3}],
            "tested": tested,
            "null": {"random_words": 30, "mean": 0.01, "std": 0.15, "gold_std": 0.02},
            "insertion_texts": 32,
            "cues": ["indeed"] if cue else [],
            "promoted": [{"word": "indeed", "rm_z": 4.3, "gold": 0.0, "gaming": cue},
                         {"word": "love", "rm_z": 3.2, "gold": 3.2, "gaming": False}]},
        "sae": {"dir": "sae", "dict_size": 1152, "k": 32, "fvu": 0.08, "rows": 61000, "texts": 1024},
        "decomposition": {"texts": 1024, "max_relative_error": 3.1e-6, "bias": 0.12, "b_dec_term": -0.35},
        "features": features,
        "error": {"gain": {"mean": 0.04, "se": 0.02}, "margin": {"mean": 0.03, "se": 0.02}},
        "named": {"gold_aligned": 9, "margin": 8, "on_nulls": {"shuffles": 20, "gold_aligned": {"mean": 0.75, "max": 4},
                                                               "margin": {"mean": 0.0, "max": 0}}},
        "gain": {"prompts": 64, "total": {"mean": 0.84, "se": 0.05, "p": 0.001},
                 "placebo_total": {"mean": 0.02, "se": 0.04, "p": 0.61},
                 "split": {"gold": stat(0.52, 0.04, 0.001, 0.62), "anti-gold": stat(-0.03, 0.02, 0.2, -0.036),
                           "cue": stat(0.26, 0.03, 0.001, 0.31) if cue else stat(0.01, 0.02, 0.6, 0.012),
                           "other": stat(0.05, 0.03, 0.1, 0.06), "error": stat(0.04, 0.02, 0.05, 0.048)}},
        "probe": {"target": "the RM's reward", "texts": 512, "folds": 5, "chance": 0.5,
                  "dictionaries": {"tuned (block 3)": {"accuracy": 0.81, "sd": 0.03, "layer": 3},
                                   "base (block 3)": {"accuracy": 0.72, "sd": 0.04, "layer": 3},
                                   "random control": {"accuracy": 0.52, "sd": 0.05, "layer": 3}},
                  "top_features": [{"dictionary": "tuned (block 3)", "feature": 41, "weight": 1.9,
                                    "explanation": "emphatic agreement"}]},
        "verdict": ({"kind": "flaws", "cues": ["indeed"],
                     "text": "the policy's gain rests partly on an RM flaw: the RM pays for 'indeed', which the gold "
                             "does not value, and the tuned policy uses it"} if cue else
                    {"kind": "gold", "cues": [],
                     "text": "the RM rewards what the gold rewards: no word pays beyond the random words"}),
        "seconds": {"token_scan": 41.0, "sae": 120.0, "gain": 12.0, "probe": 30.0},
    }
