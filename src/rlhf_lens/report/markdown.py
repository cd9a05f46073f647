"""summary.md: the report's sections in Markdown (no plots, no token highlights, no config). The headline and
"What tuning changed" are written once as parts (`headline`, `diff`, `decompose`) and rendered here and in the page
alike; the other sections' tables are built from the same rows (`format`)."""

from __future__ import annotations

from .decompose import decompose_parts
from .diff import diff_markdown
from .format import (
    _COUNT_HEADERS,
    _NEW_HEADERS,
    _SAE_METRICS,
    NOT_RUN,
    _float,
    _layer,
    _mean_se,
    _mean_std,
    _metric_text,
    _model_key,
    _new_counts,
    _num,
    _pct,
    _sae_groups,
    _table_words_text,
    _utility_rows,
    control_highest_text,
    elsewhere_text,
    heldout_of,
    section_title,
    shown_sections,
    steering_rewards_text,
    tune_moved_text,
    tuned_elsewhere,
    utility_control_highest,
)
from .gold import gold_parts
from .headline import headline_parts
from .inspect_rm import inspect_rm_markdown
from .reward_model import reward_model_markdown
from .scoring import (
    EFFECT_HEADERS,
    SUMMARY_HEADERS,
    cost_text,
    effect_rows,
    scored_columns,
    simulation_cell,
    summary_rows,
)
from .tables import md_cell, md_table, parts_markdown
from .tracked import RUN_RESULTS, Source, Tracked


def render_markdown(results: dict, sections: tuple[str, ...] | None = None, source: Source = RUN_RESULTS) -> str:
    """summary.md: the report's sections in Markdown (no plots, no token highlights); `sections`: the ids to write
    (default: all but the config, which only the page shows)."""
    tracked = Tracked(results, source)
    content = tracked.content
    out = tracked.draw("the header", _header_markdown, content)
    for sid in shown_sections(content):
        if sid not in _MD_SECTIONS or (sections is not None and sid not in sections):
            continue
        title = tracked.draw(f"the title of section {sid!r}", section_title, sid, content)
        body = tracked.draw(f'the section "{title}"', _MD_SECTIONS[sid], content)
        out += [f"## {title}", "", body if body else f"_{NOT_RUN}_", ""]
    return "\n".join(out).rstrip() + "\n"


def _header_markdown(results: dict) -> list[str]:
    out = [f"# {md_cell(results.get('title') or 'rlhf-lens run')}", ""]
    if results.get("created") or results.get("run_dir"):
        out += [" \u00b7 ".join(md_cell(x) for x in (results.get("created"), results.get("run_dir")) if x), ""]
    models = results.get("models") or {}
    if models:
        out += [md_table(["model", "spec"], [[m, models.get(m) or "none"] for m in sorted(models, key=_model_key)]), ""]
    moved = tune_moved_text(results)
    if moved:
        out += [f"**{md_cell(moved)}**", ""]
    return out


def _headline(results: dict) -> str | None:
    parts = headline_parts(results)
    return parts_markdown(parts) if parts else None


def _diff(results: dict) -> str | None:
    diff = results.get("diff")
    if not diff:
        return None
    decompose = results.get("decompose")
    return (diff_markdown(diff, (results.get("placebo") or {}).get("diff"), heldout_of(results))
            + ("\n\n" + parts_markdown(decompose_parts(decompose, results.get("placebo"))) if decompose else ""))


def _ppo(results: dict) -> str | None:
    ppo = results.get("ppo") or {}
    body = []
    if tuned_elsewhere(results):
        body.append(md_cell(elsewhere_text(results)))
    log = [r for r in (ppo.get("log") or []) if isinstance(r, dict)]
    if log:
        last = log[-1]
        body.append(f"{len(log)} PPO steps; last step: reward {md_cell(_float(last.get('reward')))}, "
                    f"KL {md_cell(_float(last.get('kl')))}, beta {md_cell(_float(last.get('beta')))}.")
    evaluation = ppo.get("eval")
    if evaluation:
        rows = []
        gold = evaluation.get("gold")
        for name in ("base", "tuned"):
            e = evaluation.get(name) or {}
            rows.append([name, f"{_num(_float(e.get('mean')))} \u00b1 {_num(_float(e.get('se')))}",
                         _pct(e.get("positive_frac")), *([_mean_se(gold.get(name))] if gold else [])])
        body.append(f"Held-out reward over {md_cell(evaluation.get('n'))} prompts:\n\n"
                    + md_table(["model", "mean reward \u00b1 se", "positive",
                                *([f"gold ({gold.get('spec')}) \u00b1 se"] if gold else [])], rows))
        other = steering_rewards_text(results)
        if other:
            body.append(md_cell(other))
        body += [md_cell(note) for note in evaluation.get("prompt_notes") or []]  # a corpus of short documents
    gold = parts_markdown(gold_parts(results))
    if gold:
        body.append(gold)
    return "\n\n".join(body) if body else None


def _divergence(results: dict) -> str | None:
    divergence = results.get("divergence") or {}
    rows = sorted((r for r in (divergence.get("rows") or []) if isinstance(r, dict)), key=_layer)
    if not rows:
        return None
    top = {int(x) for x in (divergence.get("top_layers") or []) if _float(x) is not None}
    return (f"Blocks analysed: {', '.join(map(str, sorted(top))) or '-'}\n\n"
            + md_table(["block", "divergence", "analysed"],
                       [[r.get("layer"), _float(r.get("divergence")), "yes" if _layer(r) in top else ""] for r in rows]))


def _saes(results: dict) -> str | None:
    saes = results.get("saes")
    if not saes:
        return None
    return md_table(["model", "block", "dict size", "arch", "l1", "seeds", "MSE", "FVU", "L0", "dead", "warnings"],
                    [[g["model"], g["layer"], g["dict_size"], g["arch"], g["l1"], len(g["seeds"]),
                      *(_metric_text(g["metrics"][name], percent=name == "dead_fraction") for name in _SAE_METRICS[:4]),
                      "; ".join(g["warnings"])] for g in _sae_groups(saes)])


def _mmcs(results: dict) -> str | None:
    mmcs = results.get("mmcs")
    if not mmcs:
        return None
    return md_table(["model", "block", "kind", "MMCS mean \u00b1 std", "seeds"],
                    [[r.get("model"), r.get("layer"), r.get("kind"), _mean_std(r), len(r.get("values") or [])]
                     for r in mmcs])


def _features(results: dict) -> str | None:
    features = results.get("features")
    if not features:
        return None
    parts = []
    scoring = (results.get("utility") or {}).get("scoring") or {}
    if summary_rows(scoring):
        parts.append("Each score beside its null (the same examples scored with another feature's explanation), pooled "
                     "per model by a one-sided sign-flip test:\n\n" + md_table(SUMMARY_HEADERS, summary_rows(scoring)))
    if effect_rows(scoring):
        parts.append("Reward effect (TokenChange: the feature's decoder row steers its model at the diff's coherent "
                     "strength; promoted words' utility minus frequency-matched random sets; BH q at the level):\n\n"
                     + md_table(EFFECT_HEADERS, effect_rows(scoring)))
    if cost_text(scoring):
        parts.append(md_cell(cost_text(scoring)))
    for model in sorted({str(f.get("model", "?")) for f in features}, key=_model_key):
        rows = sorted((f for f in features if str(f.get("model", "?")) == model), key=_layer)
        extra = scored_columns(rows)
        parts.append(f"### {md_cell(model)}\n\n" + md_table(
            ["block", "feature", "max cos", "explanation", "sim. score (null)", "utility", "reward corr",
             *[h for h, _ in extra]],
            [[f.get("layer"), f.get("feature"), _float(f.get("max_cosine")), f.get("explanation"),
              simulation_cell(f), _float(f.get("utility")), _float(f.get("reward_corr")),
              *[cell(f) for _, cell in extra]] for f in rows]))
    return "\n\n".join(parts)


def _new_features(results: dict) -> str | None:
    new = results.get("new_features")
    if new is None:
        return None
    counts = _new_counts(results)
    parts = [counts[0], md_table(_COUNT_HEADERS, counts[1])] if counts else []
    if not new:
        return "\n\n".join([*parts, "No new features at the chosen threshold."])
    words = _table_words_text(results)
    return "\n\n".join([*parts, *([words] if words else []), md_table(
        _NEW_HEADERS, [[r.get("layer"), r.get("feature"), _float(r.get("max_cosine_to_base")), r.get("explanation"),
                        _float(r.get("score")), _float(r.get("utility")), _float(r.get("reward_corr"))]
                       for r in sorted(new, key=lambda r: (_layer(r), _float(r.get("max_cosine_to_base")) or 0.0))])])


def _utility(results: dict) -> str | None:
    utility = results.get("utility")
    if not utility:
        return None
    models, rows = _utility_rows(results)
    if not rows:
        return None
    control = control_highest_text(utility_control_highest(rows))
    return (f"|{md_cell(utility.get('aggregate', 'mean'))}| of {md_cell(utility.get('table', '?'))} values per "
            "explanation, summed; reward alignment: sum over features of (share of top tokens with U > 0 minus share "
            "with U < 0).\n\n"
            + md_table(["block"] + [f"utility: {m}" for m in models] + [f"reward alignment: {m}" for m in models],
                       [[layer] + [u[m] for m in models] + [a[m] for m in models] for layer, u, a in rows])
            + (f"\n\n{md_cell(control)}" if control else "")
            + (("\n\nBeside it, the features' reward effect (TokenChange, first SAE seed):\n\n"
                + md_table(EFFECT_HEADERS, effect_rows(utility.get("scoring") or {})))
               if effect_rows(utility.get("scoring") or {}) else ""))


_MD_SECTIONS = {"headline": _headline, "diff": _diff, "inspect-rm": inspect_rm_markdown, "reward-model": reward_model_markdown, "ppo": _ppo, "divergence": _divergence, "saes": _saes,
                "mmcs": _mmcs, "features": _features, "new-features": _new_features, "utility": _utility}
"""Every section but the config, which only the page shows."""
