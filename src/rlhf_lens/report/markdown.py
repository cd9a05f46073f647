"""summary.md: the report's tables in Markdown (no plots, no token highlights)."""

from __future__ import annotations

from ..verdict import verdict
from .diff import decompose_markdown, diff_markdown, same_token_rows
from .format import (
    _COUNT_HEADERS,
    _NEW_HEADERS,
    _SAE_METRICS,
    NOT_RUN,
    SECTIONS,
    _float,
    _layer,
    _mean_std,
    _metric_text,
    _model_key,
    _new_counts,
    _num,
    _pct,
    _sae_groups,
    _stat,
    _table_words_text,
    _utility_rows,
)
from .tables import md_cell, md_table


def render_markdown(results: dict) -> str:
    """summary.md: the report's tables in Markdown (no plots, no token highlights)."""
    out = [f"# {md_cell(results.get('title') or 'rlhf-lens run')}", ""]
    if results.get("created") or results.get("run_dir"):
        out += [" \u00b7 ".join(md_cell(x) for x in (results.get("created"), results.get("run_dir")) if x), ""]
    models = results.get("models") or {}
    if models:
        out += [md_table(["model", "spec"], [[m, models.get(m) or "none"] for m in sorted(models, key=_model_key)]), ""]

    def section(sid: str, body: str | None) -> None:
        out.extend([f"## {dict(SECTIONS)[sid]}", "", body if body else f"_{NOT_RUN}_", ""])

    headline = results.get("headline")
    section("headline", md_table(
        ["measure", "base", "tuned", "control", "seeds", "verdict"],
        [[r.get("name"), _mean_std(r.get("base")), _mean_std(r.get("tuned")),
          _mean_std(r.get("control")) if r.get("control") is not None else "-", r.get("n_seeds"),
          r.get("verdict") or verdict(_stat(r.get("base")), _stat(r.get("tuned")))] for r in headline])
        if headline else None)

    diff, decompose = results.get("diff"), results.get("decompose")
    if diff and headline:
        out[-2] += "\n\nOn the same tokens (diff stage):\n\n" + md_table(["measure", "value", "null", "verdict"],
                                                                          same_token_rows(results))
    section("diff", (diff_markdown(diff) + ("\n" + decompose_markdown(decompose) if decompose else "")) if diff else None)

    ppo = results.get("ppo") or {}
    body = []
    log = [r for r in (ppo.get("log") or []) if isinstance(r, dict)]
    if log:
        last = log[-1]
        body.append(f"{len(log)} PPO steps; last step: reward {md_cell(_float(last.get('reward')))}, "
                    f"KL {md_cell(_float(last.get('kl')))}, beta {md_cell(_float(last.get('beta')))}.")
    evaluation = ppo.get("eval")
    if evaluation:
        rows = []
        for name in ("base", "tuned"):
            e = evaluation.get(name) or {}
            rows.append([name, f"{_num(_float(e.get('mean')))} \u00b1 {_num(_float(e.get('se')))}",
                         _pct(e.get("positive_frac"))])
        body.append(f"Held-out reward over {md_cell(evaluation.get('n'))} prompts:\n\n"
                    + md_table(["model", "mean reward \u00b1 se", "positive"], rows))
    section("ppo", "\n\n".join(body) if body else None)

    divergence = results.get("divergence") or {}
    rows = sorted((r for r in (divergence.get("rows") or []) if isinstance(r, dict)), key=_layer)
    top = {int(x) for x in (divergence.get("top_layers") or []) if _float(x) is not None}
    section("divergence", (f"Blocks analysed: {', '.join(map(str, sorted(top))) or '-'}\n\n"
                           + md_table(["block", "divergence", "analysed"],
                                      [[r.get("layer"), _float(r.get("divergence")), "yes" if _layer(r) in top else ""]
                                       for r in rows])) if rows else None)

    saes = results.get("saes")
    section("saes", md_table(
        ["model", "block", "dict size", "arch", "l1", "seeds", "MSE", "FVU", "L0", "dead", "warnings"],
        [[g["model"], g["layer"], g["dict_size"], g["arch"], g["l1"], len(g["seeds"]),
          *(_metric_text(g["metrics"][name], percent=name == "dead_fraction") for name in _SAE_METRICS[:4]),
          "; ".join(g["warnings"])] for g in _sae_groups(saes)]) if saes else None)

    mmcs = results.get("mmcs")
    section("mmcs", md_table(["model", "block", "kind", "MMCS mean \u00b1 std", "seeds"],
                             [[r.get("model"), r.get("layer"), r.get("kind"), _mean_std(r), len(r.get("values") or [])]
                              for r in mmcs]) if mmcs else None)

    features = results.get("features")
    if features:
        parts = []
        for model in sorted({str(f.get("model", "?")) for f in features}, key=_model_key):
            rows = sorted((f for f in features if str(f.get("model", "?")) == model), key=_layer)
            parts.append(f"### {md_cell(model)}\n\n" + md_table(
                ["block", "feature", "max cos", "explanation", "sim. score", "utility", "reward corr"],
                [[f.get("layer"), f.get("feature"), _float(f.get("max_cosine")), f.get("explanation"),
                  _float(f.get("score")), _float(f.get("utility")), _float(f.get("reward_corr"))] for f in rows]))
        section("features", "\n\n".join(parts))
    else:
        section("features", None)

    new = results.get("new_features")
    counts = _new_counts(results)
    parts = [counts[0], md_table(_COUNT_HEADERS, counts[1])] if counts else []
    words = _table_words_text(results)
    section("new-features", None if new is None else "\n\n".join([*parts, *([words] if words else []), md_table(
        _NEW_HEADERS, [[r.get("layer"), r.get("feature"), _float(r.get("max_cosine_to_base")), r.get("explanation"),
                        _float(r.get("score")), _float(r.get("utility")), _float(r.get("reward_corr"))]
                       for r in sorted(new, key=lambda r: (_layer(r), _float(r.get("max_cosine_to_base")) or 0.0))])])
        if new else "\n\n".join([*parts, "No new features at the chosen threshold."]))

    if results.get("utility"):
        models, rows = _utility_rows(results)
        utility = results["utility"]
        section("utility", (f"|{md_cell(utility.get('aggregate', 'mean'))}| of {md_cell(utility.get('table', '?'))} values "
                            "per explanation, summed; reward alignment: sum over features of (share of top tokens with U > 0 "
                            "minus share with U < 0).\n\n"
                            + md_table(["block"] + [f"utility: {m}" for m in models]
                                       + [f"reward alignment: {m}" for m in models],
                                       [[layer] + [u[m] for m in models] + [a[m] for m in models]
                                        for layer, u, a in rows])) if rows else None)
    else:
        section("utility", None)
    return "\n".join(out).rstrip() + "\n"
