"""Compare dictionaries (unit-norm feature rows [m, d]) by max cosine similarity and MMCS.

MMCS(D, D') = mean over rows d of D of max over rows d' of D' of cos(d, d')  (Sharkey et al. 2022).
It is not symmetric: D is the dictionary whose features are scored (paper: the small one; across models:
the tuned one), and every index reported is an index of D, with its best match in D'.

Every function takes tensors [m, d] (rows are normalised here), SparseAutoencoder objects or SAE folders.
`compare_run_saes` applies them to a run's SAEs (the pipeline's mmcs stage, mmcs.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import UserError
from .sae import SparseAutoencoder, load_dictionary

Dictionary = torch.Tensor | SparseAutoencoder | str | Path

NEW_FEATURE_THRESHOLD = 0.7
"""A feature of D whose best cosine in D' is below this has "no close counterpart" (new_features)."""


def pair_dictionaries(a: Dictionary, b: Dictionary) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as unit-row tensors [m, d], [m', d]; UserError if their widths d differ."""
    da, db = load_dictionary(a), load_dictionary(b)
    if da.shape[1] != db.shape[1]:
        raise UserError(f"dictionaries have different widths (d = {da.shape[1]} vs {db.shape[1]}): "
                        "compare SAEs trained on activations of the same width (same block of same-size models)")
    return da, db


def max_cosine(a: Dictionary, b: Dictionary, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For every feature i of `a`: (the largest cosine with any feature of `b`, the index j of that feature)."""
    da, db = pair_dictionaries(a, b)
    values, match = [], []
    for start in range(0, da.shape[0], chunk):  # bounded memory for large dictionaries
        sims = da[start:start + chunk] @ db.t()
        v, j = sims.max(dim=1)
        values.append(v)
        match.append(j)
    return torch.cat(values), torch.cat(match)


def max_cosine_any(a: Dictionary, others: Sequence[Dictionary]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """max_cosine of `a` against the union of `others`: for every feature i of `a`, (the largest cosine with
    any feature of any of them, the index k in `others` of the dictionary holding it, its index j there)."""
    if not others:
        raise UserError("max_cosine_any needs at least one dictionary to compare against")
    per = [max_cosine(a, b) for b in others]
    values, which = torch.stack([v for v, _ in per]).max(dim=0)  # ties: the first dictionary
    match = torch.stack([j for _, j in per]).gather(0, which[None]).squeeze(0)
    return values, which, match


def seed_null(seeds: Sequence[Dictionary]) -> torch.Tensor:
    """Max cosine of every feature of seeds[0] against the other seeds' dictionaries (max over them).

    The dictionaries are one model's SAEs trained with different seeds, so no feature is truly new among them:
    these are the values seed noise alone gives, the null for `new_features` (its quantile is a threshold,
    the count below a threshold the false-positive baseline)."""
    if len(seeds) < 2:
        raise UserError("a seed null needs the dictionaries of at least two seeds")
    return max_cosine_any(seeds[0], seeds[1:])[0]


def mmcs(a: Dictionary, b: Dictionary) -> float:
    """Mean max cosine similarity of `a`'s features against `b`."""
    return float(max_cosine(a, b)[0].mean())


def top_features(a: Dictionary, b: Dictionary, k: int = 10) -> list[dict]:
    """The k features of `a` with the highest max cosine against `b` (ties: lower index first):
    [{"feature": i (index in a), "max_cosine": c, "match": j (index in b)}, ...]."""
    if k < 1:
        raise UserError(f"--top-k must be >= 1 (got {k})")
    values, match = max_cosine(a, b)
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return [{"feature": int(i), "max_cosine": float(values[i]), "match": int(match[i])} for i in order]


def hungarian_matching(a: Dictionary, b: Dictionary) -> list[dict]:
    """One-to-one matching of features of `a` to features of `b` maximising the total cosine
    (min(m, m') pairs): [{"feature": i, "match": j, "cosine": c}, ...] ordered by i."""
    from scipy.optimize import linear_sum_assignment

    da, db = pair_dictionaries(a, b)
    sims = (da @ db.t()).double().numpy()
    rows, cols = linear_sum_assignment(sims, maximize=True)
    return [{"feature": int(i), "match": int(j), "cosine": float(sims[i, j])} for i, j in zip(rows, cols)]


def new_features(tuned: Dictionary, base: Dictionary | Sequence[Dictionary],
                 threshold: float = NEW_FEATURE_THRESHOLD) -> list[dict]:
    """Features of `tuned` with no close counterpart in `base` (max cosine < threshold), least similar first:
    [{"feature": i, "max_cosine": c, "match": j}, ...]. Same block of base and tuned model.

    `base` may be a list of dictionaries (the base model's seeds): then the max runs over all of them, so a
    feature one seed happened to miss is not counted as new, and each row names the list index of its best
    match's dictionary as "dictionary"."""
    if isinstance(base, (list, tuple)):
        values, which, match = max_cosine_any(tuned, base)
    else:
        (values, match), which = max_cosine(tuned, base), None
    order = torch.sort(values, stable=True).indices
    return [{"feature": int(i), "max_cosine": float(values[i]), "match": int(match[i]),
             **({"dictionary": int(which[i])} if which is not None else {})}
            for i in order if float(values[i]) < threshold]


def compare(a: Dictionary, b: Dictionary, top_k: int = 10, hungarian: bool = False,
            new_below: float | None = None) -> dict:
    """The `rlhf-lens mmcs` JSON: {"mmcs", "top_features", ["hungarian"], ["new_features"]}."""
    da, db = pair_dictionaries(a, b)
    out: dict = {"mmcs": mmcs(da, db), "size_a": da.shape[0], "size_b": db.shape[0], "d": da.shape[1],
                 "top_features": top_features(da, db, top_k)}
    if hungarian:
        pairs = hungarian_matching(da, db)
        out["hungarian"] = {"mean_cosine": sum(p["cosine"] for p in pairs) / max(len(pairs), 1), "pairs": pairs}
    if new_below is not None:
        out["new_threshold"] = new_below
        out["new_features"] = new_features(da, db, new_below)
    return out


ONE_SEED_THRESHOLD = 0.5
"""The auto threshold with a single SAE seed: no seed-vs-seed null to calibrate against, so a fixed value."""


def new_in_block(tuned: Dictionary, bases: dict[int, Dictionary], seed: int, threshold: float = 0.0,
                 quantile: float = 0.05) -> tuple[list[dict], dict]:
    """One block's tuned features that are new against the base model, judged against seed noise.

    `tuned` is the tuned model's dictionary of SAE seed `seed`; `bases` maps every SAE seed to the base model's
    dictionary (same block, same size). Like is compared with like (leave-one-out on both sides): the tuned
    dictionary of seed s is matched against the base dictionaries of the *other* seeds, and the null is the
    base dictionary of seed s against the same other seeds, so both sides face the same reference set (matching
    tuned against all n seeds but the null against n - 1 would bias the threshold toward "nothing new").
    With one seed there is no null: the tuned dictionary is matched against that base seed.

    threshold > 0 fixes the threshold; 0: the `quantile` of the null (about that share of base features counts
    as new against the other base seeds). Returns (rows of new features, least similar first; the block's
    summary: threshold, its source, counts and the null).
    """
    others = [s for s in bases if s != seed]
    reference = [bases[s] for s in others] if others else [bases[seed]]
    null = max_cosine_any(bases[seed], reference)[0] if others else None
    if threshold > 0:
        value, source = threshold, f"fixed {threshold:g} (interp.new_feature_threshold)"
    elif null is None:
        value, source = ONE_SEED_THRESHOLD, f"fixed {ONE_SEED_THRESHOLD:g} (one seed: no null)"
    else:
        value = float(torch.quantile(null.double(), quantile))
        source = f"auto: {quantile:g} quantile of base seed {seed} vs seed{'s' if len(others) > 1 else ''} " \
                 f"{', '.join(map(str, others))}"
    reference_seeds = others or [seed]
    found = new_features(tuned, reference, value)
    rows = [{"feature": r["feature"], "max_cosine_to_base": r["max_cosine"], "match": r["match"],
             "match_seed": reference_seeds[r["dictionary"]]} for r in found]
    summary = None
    if null is not None:
        values = null.double()
        summary = {"seed": seed, "against": others, "n": int(values.numel()), "mean": float(values.mean()),
                   "p05": float(torch.quantile(values, 0.05)), "median": float(torch.quantile(values, 0.5)),
                   "below": int((values < value).sum())}
    block = {"threshold": value, "threshold_source": source, "base_seeds": list(bases),
             "reference_seeds": reference_seeds, "tuned_n": int(load_dictionary(tuned).shape[0]),
             "found": len(rows), "null": summary}
    return rows, block


# --- a run's SAEs compared (the pipeline's mmcs stage, mmcs.json) ------------------------------------------------


def small_and_large(saes: Sequence[dict], model: str, layer: int, seed: int) -> tuple[dict, dict]:
    """Among SAE rows ({"model", "layer", "seed", "dict_size", "dir", ...}: a run's saes stage), the smallest and
    the largest dictionary of one model, block and seed."""
    rows = [s for s in saes if s["model"] == model and s["layer"] == layer and s["seed"] == seed]
    rows.sort(key=lambda s: s["dict_size"])
    return rows[0], rows[-1]


def compare_run_saes(saes: Sequence[dict], models: Sequence[str], layers: Sequence[int], seeds: Sequence[int],
                     top_k: int = 10, new_threshold: float = 0.0, new_quantile: float = 0.05,
                     root: str | Path | None = None) -> dict:
    """mmcs.json of a run (docs/pipeline.md): per model, block and seed MMCS(small, large) (`within`) and the small
    dictionary's `top_k` features by max cosine (`top`); each non-base model's small dictionary against the base's
    (`across`); the tuned model's features new against the base's seeds (`new`, `new_blocks`: `new_in_block` with
    the first seed, `new_threshold` and `new_quantile`).

    `saes` are SAE rows as `small_and_large` reads them; their `dir` is read against `root` (when given) and
    recorded as given. `models` must hold "base" and "tuned".
    """
    dictionaries: dict[str, torch.Tensor] = {}

    def dictionary(row: dict) -> torch.Tensor:
        if row["dir"] not in dictionaries:
            folder = Path(root) / row["dir"] if root is not None else Path(row["dir"])
            dictionaries[row["dir"]] = SparseAutoencoder.load(folder).dictionary.detach()
        return dictionaries[row["dir"]]

    within, across, top, new, new_blocks = [], [], [], [], []
    for model in models:
        for layer in layers:
            for seed in seeds:
                small, large = small_and_large(saes, model, layer, seed)
                within.append({"model": model, "layer": layer, "seed": seed, "small": small["dict_size"],
                               "large": large["dict_size"], "mmcs": mmcs(dictionary(small), dictionary(large))})
                top.append({"model": model, "layer": layer, "seed": seed, "sae": small["dir"],
                            "features": top_features(dictionary(small), dictionary(large), top_k)})
    for other in (m for m in models if m != "base"):
        for layer in layers:
            for seed in seeds:
                mine, _ = small_and_large(saes, other, layer, seed)
                base, _ = small_and_large(saes, "base", layer, seed)
                across.append({"model": other, "against": "base", "layer": layer, "seed": seed,
                               "mmcs": mmcs(dictionary(mine), dictionary(base))})
    for layer in layers:
        seed = seeds[0]
        tuned = dictionary(small_and_large(saes, "tuned", layer, seed)[0])
        bases = {s: dictionary(small_and_large(saes, "base", layer, s)[0]) for s in seeds}
        rows, block = new_in_block(tuned, bases, seed, new_threshold, new_quantile)
        new += [{"layer": layer, **row} for row in rows]
        new_blocks.append({"layer": layer, **block, "tuned_seed": seed})
    return {"within": within, "across": across, "top": top, "new": new, "new_blocks": new_blocks}
