"""How much of the reward (a utility table word -> value) the explained features carry.

Utility score (paper Section 6.2, Table 3): an explanation's words (`rewards.words`:
lower-cased, punctuation stripped) are looked up in the table; words not in it count as
neutral and are left out; the explanation scores |aggregate| of the values found (`mean`,
as the authors' notebook did, or `sum`; 0 when no word is found). A model scores the sum
over all its explained features, per block and in total.

Reward alignment (beyond the paper; needs no explainer): per feature, over the tokens of
its top, held-out and random records, the Pearson correlation between the feature's raw
activation and U(token), where a token's utility is U of the unit it belongs to (text.py:
subword pieces take the value of their whole word; whitespace and unknown words count 0);
and, over its `top_tokens` most active tokens (activation > 0, top and held-out records),
the share whose unit has U > 0 and the share with U < 0, and |mean U| of those tokens. Per
model: sums over features; the headline `reward_score` is the sum of sign_share =
positive_share - negative_share (docs/interp.md).

`seed_scores` gives a run's headline: each of these per model as mean and spread over SAE seeds, with a verdict.
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import UserError
from .config import check_aggregate
from .scoring import pearson
from .text import token_keys

TOP_TOKENS = 20


def _words(text: str, keep: frozenset[str]) -> list[str]:
    from ..rewards import words

    return words(text, keep)


def table_entries(table: dict[str, float]) -> frozenset[str]:
    """The table's punctuated entries (":)") that count as one word (`rewards.special_entries`)."""
    from ..rewards import special_entries

    return special_entries(table)


def explanation_utility(explanation: str, table: dict[str, float], aggregate: str = "mean",
                        keep: frozenset[str] | None = None) -> tuple[float, dict]:
    """|mean| or |sum| of the table values of the explanation's words, and the words found with their values.

    A word found twice counts twice in the aggregate. `keep`: `table_entries(table)`, if already computed.
    """
    value, found = signed_explanation_utility(explanation, table, aggregate, keep)
    return abs(value), found


def signed_explanation_utility(explanation: str, table: dict[str, float], aggregate: str = "mean",
                               keep: frozenset[str] | None = None) -> tuple[float, dict]:
    """`explanation_utility` with its sign: mean or sum of the table values of the explanation's words."""
    check_aggregate(aggregate)
    keep = table_entries(table) if keep is None else keep
    found = [(w, float(table[w])) for w in _words(explanation, keep) if w in table]
    if not found:
        return 0.0, {}
    total = sum(v for _, v in found)
    return (total / len(found) if aggregate == "mean" else total), dict(found)


def token_utilities(tokens: list[str], table: dict[str, float], keep: frozenset[str] | None = None) -> list[float]:
    """U of the unit (word or punctuation run) each token belongs to; 0 when not in the table."""
    keep = table_entries(table) if keep is None else keep
    return [float(table.get(key, 0.0)) if key else 0.0 for key in token_keys(tokens, keep)]


def _values(example: dict) -> list[float]:
    """Raw activations when the record has them, else its 0..10 integers."""
    values = example.get("values")
    return [float(v) for v in (values if values is not None else example["activations"])]


def reward_alignment(record: dict, table: dict[str, float], top_tokens: int = TOP_TOKENS,
                     keep: frozenset[str] | None = None) -> dict:
    """`reward_corr`, `positive_share`, `negative_share`, `sign_share`, `top_utility` of one feature record."""
    keep = table_entries(table) if keep is None else keep
    examples = list(record.get("examples", [])) + list(record.get("scoring_examples", []))
    acts: list[float] = []
    utils: list[float] = []
    strong: list[tuple[float, float]] = []  # (activation, utility) on top and held-out records
    for example in examples:
        values, u = _values(example), token_utilities(example["tokens"], table, keep)
        acts += values
        utils += u
        if example.get("kind", "top") in ("top", "holdout"):
            strong += [(a, x) for a, x in zip(values, u) if a > 0]
    strong.sort(key=lambda p: -p[0])
    strong = strong[:top_tokens]
    top_utility = abs(sum(x for _, x in strong) / len(strong)) if strong else 0.0
    positive = sum(1 for _, x in strong if x > 0) / len(strong) if strong else 0.0
    negative = sum(1 for _, x in strong if x < 0) / len(strong) if strong else 0.0
    return {"reward_corr": pearson(acts, utils), "positive_share": positive, "negative_share": negative,
            "sign_share": positive - negative, "top_utility": top_utility}


def annotate(records: list[dict], table: dict[str, float], aggregate: str = "mean") -> list[dict]:
    """Fill `utility`, `utility_words` and the reward-alignment fields of feature records (in place)."""
    keep = table_entries(table)
    for record in records:
        record["utility"], record["utility_words"] = explanation_utility(record.get("explanation", ""), table,
                                                                         aggregate, keep)
        record.update(reward_alignment(record, table, keep=keep))
    return records


def _summary(records: list[dict]) -> dict:
    return {
        "utility": sum(r["utility"] for r in records),
        "n_features": len(records),
        "reward_score": sum(r["sign_share"] for r in records),
        "reward_corr_abs": sum(abs(r["reward_corr"]) for r in records),
        "reward_corr": sum(r["reward_corr"] for r in records),
        "positive_share": sum(r["positive_share"] for r in records),
        "negative_share": sum(r["negative_share"] for r in records),
        "sign_share": sum(r["sign_share"] for r in records),
        "top_utility": sum(r["top_utility"] for r in records),
        # None when interp.scorer leaves simulation out (no record has a simulation score)
        "mean_simulation_score": _mean_or_none([float(r["score"]) for r in records if r.get("score") is not None]),
    }


def utility_scores(records_by_model: dict[str, list[dict]], table: dict[str, float],
                   aggregate: str = "mean") -> dict:
    """Per block and total, per model: utility score (Table 3) and reward alignment.

    Recomputed from each record's explanation and examples with `table` (fields already in the
    records are overwritten in copies, not in the inputs).
    """
    models = list(records_by_model)
    annotated = {m: annotate([dict(r) for r in records], table, aggregate) for m, records in records_by_model.items()}
    layers = sorted({int(r["layer"]) for records in annotated.values() for r in records})
    by_block: dict[str, dict[int, list[dict]]] = {m: defaultdict(list) for m in models}
    for m, records in annotated.items():
        for r in records:
            by_block[m][int(r["layer"])].append(r)
    return {
        "aggregate": aggregate,
        "models": models,
        "blocks": [{"layer": layer, **{m: _summary(by_block[m][layer]) for m in models}} for layer in layers],
        "total": {m: _summary(annotated[m]) for m in models},
        "features": {m: [{k: r.get(k) for k in ("layer", "sae", "feature", "explanation", "score", "utility",
                                                  "utility_words", "reward_corr", "positive_share",
                                                  "negative_share", "sign_share", "top_utility")}
                           for r in annotated[m]]
                     for m in models},
    }


def mean_std(values: list[float]) -> dict:
    """{"mean", "std" (sample, n - 1; 0 for one value), "values", "n"}: a measure's spread over seeds."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()) if arr.size else None, "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "values": [float(v) for v in arr], "n": int(arr.size)}


def _mean_or_none(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def seed_scores(records: dict[str, list[dict]], mmcs_within: list[dict], seeds: list[int], layers: list[int],
                table_spec: str, aggregate: str = "mean") -> tuple[list[dict], dict]:
    """Utility score (Table 3), reward alignment, simulation score and MMCS per model, as mean +- spread over SAE
    seeds, each with a verdict (the pipeline's scores stage).

    `records`: model -> its feature records of every block and seed (records name their SAE `s{seed}`; "base" and
    "tuned" among the models); `mmcs_within`: mmcs.json's `within` rows; `table_spec`: the utility table
    (`rewards.load_utility_table`). Returns (the headline rows, utility.json: per block and total, the per-seed
    `utility_scores` under `per_seed`).
    """
    from ..rewards import load_utility_table
    from ..verdict import verdict

    table = load_utility_table(table_spec)
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = utility_scores({m: [r for r in rs if r["sae"] == f"s{seed}"] for m, rs in records.items()},
                                        table, aggregate)
    models = list(records)
    metrics = {
        "MMCS (within)": lambda m, s: _mean([w["mmcs"] for w in mmcs_within if w["model"] == m and w["seed"] == s]),
        "simulation score": lambda m, s: per_seed[s]["total"][m]["mean_simulation_score"],
        "utility score": lambda m, s: per_seed[s]["total"][m]["utility"],
        "reward alignment": lambda m, s: per_seed[s]["total"][m]["reward_score"],
    }
    headline = []
    for name, metric in metrics.items():
        if any(metric(m, s) is None for m in models for s in seeds):
            continue  # not measured in this run (the simulation score, with interp.scorer leaving it out)
        row = {"name": name, "n_seeds": len(seeds)}
        for m in models:
            row[m] = mean_std([metric(m, s) for s in seeds])
        row["verdict"] = verdict(row["base"], row["tuned"])
        headline.append(row)
    per_block = []
    for layer in layers:
        entry = {"layer": layer}
        for m in models:
            values = [next(b[m]["utility"] for b in per_seed[s]["blocks"] if b["layer"] == layer) for s in seeds]
            entry[m] = {"utility": _mean(values),
                        "reward_score": _mean([next(b[m]["reward_score"] for b in per_seed[s]["blocks"]
                                                    if b["layer"] == layer) for s in seeds])}
        per_block.append(entry)
    utility = {"aggregate": aggregate, "table": table_spec, "per_block": per_block,
               "total": {m: {key: next(h for h in headline if h["name"] == name)[m]["mean"]
                             for key, name in (("utility", "utility score"), ("reward_score", "reward alignment"))}
                         for m in models},
               "per_seed": {str(s): per_seed[s] for s in seeds}}
    return headline, utility


def format_table(result: dict) -> str:
    """Table 3 style: utility per block and in total, models side by side, then the reward alignment."""
    models = result["models"]
    width = max(12, *(len(m) + 2 for m in models))
    head = f"{'block':>14}" + "".join(f"{m:>{width}}" for m in models)
    lines = [f"utility score (|{result['aggregate']}| of table values per explanation, summed over features)", head]
    for block in result["blocks"]:
        lines.append(f"{block['layer']:>14}" + "".join(f"{block[m]['utility']:>{width}.2f}" for m in models))
    lines.append(f"{'total':>14}" + "".join(f"{result['total'][m]['utility']:>{width}.2f}" for m in models))
    lines += ["", "reward alignment (no explainer; summed over features; top = 20 most active tokens)",
              f"{'':>14}" + "".join(f"{m:>{width}}" for m in models)]
    for label, key in (("reward score", "reward_score"), ("top U>0", "positive_share"),
                       ("top U<0", "negative_share"), ("|corr(a, U)|", "reward_corr_abs"),
                       ("|mean U| top", "top_utility"), ("features", "n_features"),
                       ("mean sim.", "mean_simulation_score")):
        digits = 0 if key == "n_features" else 2
        lines.append(f"{label:>14}" + "".join(f"{'-':>{width}}" if result["total"][m][key] is None else
                                               f"{result['total'][m][key]:>{width}.{digits}f}" for m in models))
    lines.append("reward score = top U>0 - top U<0 (shares of each feature's top tokens the table favours / penalises)")
    return "\n".join(lines)


def load_feature_records(path) -> list[dict]:
    """Feature records from a JSON file written by `explain`, checked enough to score them."""
    from ..io import read_json

    records = read_json(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path}: expected a JSON list of feature records (from `rlhf-lens explain`)")
    for n, record in enumerate(records):
        missing = [k for k in ("layer", "feature", "explanation", "examples") if k not in record]
        if missing:
            raise UserError(f"{path}: record {n} lacks {', '.join(missing)}; regenerate it with `rlhf-lens explain`")
    return records
