"""Numbers, statistics and table rows for people: shared by the HTML page and summary.md."""

from __future__ import annotations

import html
import math
import re
import statistics
from typing import Any

# The report writes numbers as the verdict sentence does: one formatting, in rlhf_lens.verdict, under short names here.
from ..verdict import finite_float as _float
from ..verdict import format_number as _num
from ..verdict import seed_stat as _stat
from ..verdict import verdict, verdict_level

# (id, title) of every section, in page order: the ids are stable (tests and links use them).
SECTIONS = (
    ("headline", "Headline numbers"),
    ("diff", "What tuning changed"),
    ("inspect-rm", "What the reward model rewards"),
    ("reward-model", "The learned reward model"),
    ("ppo", "PPO fine-tuning"),
    ("divergence", "Layer divergence"),
    ("saes", "Sparse autoencoders"),
    ("mmcs", "MMCS: dictionary agreement"),
    ("features", "Top features and their explanations"),
    ("new-features", "Features new in the tuned model"),
    ("utility", "Utility score (Table 3)"),
    ("config", "Configuration"),
)


NOT_RUN = "not run"

ONLY_WHEN_RUN = {"reward-model": "reward_model", "inspect-rm": "inspect_rm"}
"""Sections drawn only when their results.json key holds something (a run without its own reward model has no
section about one, rather than a "not run" line)."""


def shown_sections(results: dict) -> list[str]:
    """The ids of the sections a report of `results` draws (`SECTIONS` less those `ONLY_WHEN_RUN` leaves out)."""
    return [sid for sid, _ in SECTIONS if sid not in ONLY_WHEN_RUN or results.get(ONLY_WHEN_RUN[sid])]


def tuned_elsewhere(results: dict) -> bool:
    """Whether the tuned model came from outside the run (model.tuned): then no PPO ran here."""
    evaluation = (results.get("ppo") or {}).get("eval") or {}
    model = (results.get("config") or {}).get("model") or {}
    return evaluation.get("tuned_by") == "external" or bool(model.get("tuned"))


def section_title(sid: str, results: dict) -> str:
    """A section's heading: its title in SECTIONS, said for what the run did (a model tuned elsewhere had no PPO)."""
    if sid == "ppo" and tuned_elsewhere(results):
        return "Tuned elsewhere: held-out reward"
    return dict(SECTIONS)[sid]


def elsewhere_text(results: dict) -> str:
    """What the PPO section says instead of a training log when the tuned model came from elsewhere."""
    tuned = (results.get("models") or {}).get("tuned")
    return (f"The tuned model{f' ({tuned})' if tuned else ''} was tuned elsewhere: no PPO ran in this run, so there "
            "is no training log. Both models are scored on the same held-out prompts with the same random numbers.")


def steering_rewards_text(results: dict) -> str | None:
    """The PPO section's pointer to the diff's own base and tuned rewards, which are on other prompts."""
    reference = (results.get("diff") or {}).get("reference") or {}
    if not reference:
        return None
    return (f"\u201cWhat tuning changed\u201d scores base and tuned again, on the diff's own {_num(reference.get('n_prompts'))} "
            f"prompts continued by {_num(reference.get('new_tokens'))} tokens (diff.prompts, diff.new_tokens), so its "
            "steering figures differ from these.")


def heldout_of(results: dict) -> dict | None:
    """The PPO section's held-out evaluation as the diff section names it: prompts, continuation length, section."""
    evaluation = (results.get("ppo") or {}).get("eval") or {}
    if not evaluation:
        return None
    rlhf = (results.get("config") or {}).get("rlhf") or {}
    low, high = rlhf.get("min_new_tokens"), rlhf.get("max_new_tokens")
    tokens = None if low is None or high is None else _num(low) if low == high else f"{_num(low)}-{_num(high)}"
    return {"n": evaluation.get("n"), "tokens": tokens, "section": section_title("ppo", results)}


def verdict_label(key: str) -> str:
    """A diff.json verdict key (`output`, `steering_19`, `lens_21`, `ranking`) in words."""
    found = re.fullmatch(r"(steering|lens)_(-?\d+)", str(key))
    if found:
        return (f"steering by \u0394 at block {found[2]}" if found[1] == "steering"
                else f"logit lens of \u0394 at block {found[2]}")
    return {"output": "words tuning promotes", "ranking": "causal block ranking"}.get(key, str(key).replace("_", " "))


def headline_verdict(row: dict) -> tuple[str, str]:
    """(css class, sentence) of a headline row. The headline measures are expected to rise with tuning, so the colour
    is by direction against that: green for tuned above base beyond the seed spread, red for below, amber and light
    red when only above one spread; the sentence says "higher than base" or "lower than base" in words."""
    level, diff, _ = verdict_level(row.get("base"), row.get("tuned"))
    text = row.get("verdict") or verdict(_stat(row.get("base")), _stat(row.get("tuned")))
    if level in ("missing", "within") or diff == 0:
        return "no", str(text)
    up = diff > 0
    words = "higher than base" if up else "lower than base"
    if level == "clear" and not up:
        words += ", against the expected direction (tuned above base)"
    klass = {("clear", True): "yes", ("weak", True): "maybe", ("clear", False): "against",
             ("weak", False): "against-maybe"}.get((level, up), "no")
    return klass, f"{words}: {text}"


def control_highest(rows: list[dict]) -> list[str]:
    """The headline measures on which the random-init control scores above both base and tuned."""
    names = []
    for row in rows:
        control, base, tuned = (_stat(row.get(k))["mean"] for k in ("control", "base", "tuned"))
        if control is not None and base is not None and tuned is not None and control > max(base, tuned):
            names.append(str(row.get("name", "?")))
    return names


def utility_control_highest(rows: list[tuple[Any, dict, dict]]) -> list[str]:
    """Table 3's totals (`_utility_rows`) on which the control scores above both base and tuned."""
    names = []
    for layer, util, align in rows:
        if layer != "total":
            continue
        for measure, values in (("utility score (total)", util), ("reward alignment (total)", align)):
            control, base, tuned = (values.get(m) for m in ("control", "base", "tuned"))
            if None not in (control, base, tuned) and control > max(base, tuned):
                names.append(measure)
    return names


def control_highest_text(names: list[str]) -> str | None:
    if not names:
        return None
    return (f"The random-init control scores highest on {', '.join(names)}: an untrained model's features score as "
            f"high, so {'this measure does' if len(names) == 1 else 'these measures do'} not need training and say "
            "little about what tuning taught.")


def tune_moved_text(results: dict) -> str | None:
    """The line at the top of the report when the tune barely moved the held-out reward (within 2 standard errors)."""
    evaluation = (results.get("ppo") or {}).get("eval") or {}
    base, tuned = evaluation.get("base") or {}, evaluation.get("tuned") or {}
    b, t = _float(base.get("mean")), _float(tuned.get("mean"))
    if b is None or t is None:
        return None
    se = math.hypot(_float(base.get("se")) or 0.0, _float(tuned.get("se")) or 0.0)
    moved = t - b
    if abs(moved) > 2 * se:
        return None
    n = evaluation.get("n")
    return (f"The tune moved the held-out reward by {'+' if moved >= 0 else ''}{_num(moved)} \u00b1 {_num(se)} "
            f"(tuned \u2212 base \u00b1 se{f', {_num(n)} prompts' if n is not None else ''}), within 2 standard errors "
            "of no change: expect null verdicts below.")


_MODEL_ORDER = ("base", "tuned", "control", "tuned-vs-base", "control-vs-base")


_COLORS = {"base": "#1f77b4", "tuned": "#d62728", "control": "#7f7f7f", "tuned-vs-base": "#9467bd",
           "control-vs-base": "#bcbd22"}


_EXTRA_COLORS = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#ff7f0e")


def _signed(x: Any) -> str:
    """A number with its sign ("+0.65", "-0.1"; "-" when missing)."""
    value = _float(x)
    if value is None:
        return "-"
    return ("+" if value >= 0 else "") + _num(value)


def _mean_se(value: dict | None, signed: bool = False) -> str:
    """`mean ± se` of a {mean, se} object (`signed`: the mean with its sign; "-" for none)."""
    if not value:
        return "-"
    mean = _signed(value.get("mean")) if signed else _num(_float(value.get("mean")))
    return f"{mean} \u00b1 {_num(_float(value.get('se')))}"


def _pct(x: Any) -> str:
    value = _float(x)
    return "-" if value is None else f"{100 * value:.1f}%"


def _mean_std(d: Any) -> str:
    s = _stat(d)
    if s["mean"] is None:
        return "-"
    if s["std"] is None or s["n"] == 1:  # one seed: a std of 0 would look like certainty
        return _num(s["mean"])
    return f"{_num(s['mean'])} \u00b1 {_num(s['std'], 2)}"


def _model_key(name: str) -> tuple[int, str]:
    return (_MODEL_ORDER.index(name) if name in _MODEL_ORDER else len(_MODEL_ORDER), name)


def _color(name: str, index: int = 0) -> str:
    return _COLORS.get(name, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def _layer(row: dict) -> int:
    value = _float(row.get("layer"))
    return int(value) if value is not None else -1


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


_SAE_METRICS = ("mse", "fvu", "l0", "dead_fraction", "tokens_per_s")


def _sae_groups(saes: list[dict]) -> list[dict]:
    """SAE rows grouped over seeds: one per (model, block, size, arch), metrics as (mean, std|None).

    The l1 used is shown per group as one value, or a range when target_l0 calibrated it per seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in saes:
        key = (str(r.get("model", "?")), _layer(r), r.get("dict_size"), r.get("arch"))
        groups.setdefault(key, []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (_model_key(k[0]), k[1], _float(k[2]) or 0.0, str(k[3]))):
        rows = groups[key]
        metrics = {}
        for name in _SAE_METRICS:
            values = [v for v in (_float(r.get(name)) for r in rows) if v is not None]
            # sample std (n - 1), as the pipeline's headline and MMCS spreads
            metrics[name] = (statistics.mean(values) if values else None,
                             statistics.stdev(values) if len(values) > 1 else None)
        l1 = sorted({v for v in (_float(r.get("l1")) for r in rows) if v is not None})
        seeds_of: dict[str, list] = {}  # a warning every seed gave is shown once
        for r in rows:
            for w in r.get("warnings") or []:
                seeds_of.setdefault(str(w), []).append(r.get("seed"))
        warnings = [w if len(seeds) == len(rows) else f"seed {', '.join(map(str, seeds))}: {w}"
                    for w, seeds in seeds_of.items()]
        out.append({"model": key[0], "layer": key[1], "dict_size": key[2], "arch": key[3],
                    "l1": "-" if not l1 else _num(l1[0]) if len(l1) == 1 else f"{_num(l1[0])}\u2013{_num(l1[-1])}",
                    "seeds": [r.get("seed") for r in rows], "metrics": metrics, "warnings": warnings})
    return out


def _metric_text(stat: tuple[float | None, float | None], percent: bool = False) -> str:
    mean, std = stat
    if mean is None:
        return "-"
    scale = 100.0 if percent else 1.0
    text = f"{100 * mean:.1f}%" if percent else _num(mean)
    return text if std is None else f"{text} \u00b1 {_num(scale * std, 2)}"


_NEW_HEADERS = ["block", "feature", "max cos to base", "explanation", "sim. score", "utility", "reward corr"]


_COUNT_HEADERS = ["block", "threshold", "threshold from", "tuned features below",
                  "base features below (seed noise)", "explained"]


def _new_counts(results: dict) -> tuple[str, list[list[Any]]] | None:
    """(lead sentence, one row per block of _COUNT_HEADERS) from new_feature_counts: the tuned count beside the
    false-positive baseline (base seed-0 features below the same threshold against the other base seeds)."""
    counts = results.get("new_feature_counts") or {}
    blocks = sorted((b for b in (counts.get("per_block") or []) if isinstance(b, dict)), key=_layer)
    if not blocks:
        return None
    seed = counts.get("seed", "?")
    rows = []
    for b in blocks:
        # Older results.json: one threshold for every block, at the top level, and no baseline.
        threshold = _float(b.get("threshold")) if "threshold" in b else _float(counts.get("threshold"))
        baseline = (_of(b.get("baseline"), b.get("baseline_n")) if b.get("baseline") is not None
                    else "- (one seed: no null)" if "baseline" in b else None)
        rows.append([b.get("layer"), threshold, b.get("threshold_source"), _of(b.get("found"), b.get("tuned_n")),
                     baseline, _explained_text(b)])
    lead = (f"Per block: tuned features (seed {seed}\u2019s small dictionary) with max cosine to the base below the "
            f"threshold, beside the base seed-{seed} features below the same threshold against the other base seeds, "
            "which seed noise alone calls new. A tuned count not well above that baseline is mostly seed noise.")
    return lead, rows


def _of(count: Any, total: Any) -> str:
    """"14 of 576" ("14" without a total, "-" without a count)."""
    if _float(count) is None:
        return "-"
    return f"{_num(count)} of {_num(total)}" if _float(total) is not None else _num(count)


def _explained_text(block: dict) -> str:
    if not block.get("found"):
        return "none found"
    if block.get("explained") == block.get("found"):
        return "all"
    return f"the {_num(block.get('explained'))} most novel"


def _table_words_text(results: dict) -> str | None:
    """How many new features' explanations hold utility-table words, beside the tuned model's top-k features."""
    new = [r for r in results.get("new_features") or [] if isinstance(r, dict)]
    top = [f for f in results.get("features") or [] if f.get("model") == "tuned"]
    if not new or not top or not all("utility_words" in r for r in new + top):
        return None

    def share(rows: list[dict]) -> str:
        utilities = [u for u in (_float(r.get("utility")) for r in rows) if u is not None]
        mean = sum(utilities) / len(utilities) if utilities else None
        return f"{sum(1 for r in rows if r.get('utility_words'))} of {len(rows)} (mean utility {_num(mean)})"

    return (f"Explanations with utility-table words: new features {share(new)}; "
            f"the tuned model's top-k features {share(top)}.")


def _utility_value(entry: Any, key: str) -> float | None:
    """A per-block/total entry is a number (the utility) or a summary dict (utility, reward_score, ...)."""
    if isinstance(entry, dict):
        return _float(entry.get(key))
    return _float(entry) if key == "utility" else None


def _utility_rows(results: dict) -> tuple[list[str], list[tuple[Any, dict, dict]]]:
    """Models and rows (block or "total", utility per model, reward alignment per model)."""
    utility = results.get("utility") or {}
    features = results.get("features") or []
    per_block = [r for r in (utility.get("per_block") or []) if isinstance(r, dict)]
    total = utility.get("total") or {}
    # Model columns: every key holding a number or a summary dict (null: that model was not scored).
    entries = [*((k, v) for r in per_block for k, v in r.items() if k != "layer"), *total.items()]
    models = sorted({k for k, v in entries if isinstance(v, dict) or _float(v) is not None}, key=_model_key)

    def alignment_from_features(model: str, layer: int | None) -> float | None:
        chosen = [f for f in features if f.get("model") == model and (layer is None or _layer(f) == layer)]
        values = [_float(f.get("reward_corr")) for f in chosen]
        return sum(abs(v) for v in values if v is not None) if chosen else None

    rows = []
    for r in sorted(per_block, key=_layer):
        util = {m: _utility_value(r.get(m), "utility") for m in models}
        align = {m: _utility_value(r.get(m), "reward_score") for m in models}
        align = {m: v if v is not None else alignment_from_features(m, _layer(r)) for m, v in align.items()}
        rows.append((r.get("layer"), util, align))
    if total:
        util = {m: _utility_value(total.get(m), "utility") for m in models}
        align = {m: _utility_value(total.get(m), "reward_score") for m in models}
        align = {m: v if v is not None else alignment_from_features(m, None) for m, v in align.items()}
        rows.append(("total", util, align))
    return models, rows
