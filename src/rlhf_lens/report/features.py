"""The feature sections of report.html: the top features with their explanations, the features new in the
tuned model, and the utility score (Table 3)."""

from __future__ import annotations

from .format import (
    _COUNT_HEADERS,
    _NEW_HEADERS,
    _esc,
    _float,
    _layer,
    _model_key,
    _new_counts,
    _table_words_text,
    _utility_rows,
    control_highest_text,
    utility_control_highest,
)
from .plots import _figure, _grouped_bars, _img, _png_uri
from .scoring import (
    EFFECT_HEADERS,
    SUMMARY_HEADERS,
    cost_text,
    effect_rows,
    scored_columns,
    simulation_cell,
    summary_rows,
)
from .tables import Raw, explanation_cell, html_table, not_run_html


def scoring_summary_html(scoring: dict) -> str:
    """How well the explanations score against other features' explanations (per model and scorer, pooled), what the
    features push the output toward (the reward effect's counts), and what the scorer model cost."""
    parts = []
    rows = summary_rows(scoring)
    if rows:
        parts.append('<p class="note">Each score beside its null: the same examples scored with another feature\u2019s '
                     "explanation (the shuffled-explanation null); pooled over a model\u2019s features, real minus null "
                     "tested by sign flips (one-sided).</p>" + html_table(SUMMARY_HEADERS, rows, numeric={2, 3, 4, 5}))
    effects = effect_rows(scoring)
    if effects:
        parts.append('<p class="note">Reward effect (no LLM): each feature\u2019s decoder row steers its model at the '
                     "diff\u2019s coherent strength; the mean utility of the tokens it promotes (TokenChange) minus that "
                     "of frequency-matched random token sets, claimed where its Benjamini-Hochberg q is at or below "
                     "the level.</p>" + html_table(EFFECT_HEADERS, effects, numeric={1, 2, 3, 4}))
    cost = cost_text(scoring)
    if cost:
        parts.append(f'<p class="note">{_esc(cost)}</p>')
    return "".join(parts)


def features_html(results: dict) -> str:
    features = results.get("features")
    if not features:
        return not_run_html()
    models = sorted({str(f.get("model", "?")) for f in features}, key=_model_key)
    parts = ['<p class="note">Per model: each analysed block\'s top-k features of the small dictionary by max cosine '
             "against the large one, with the explanation, its simulation score (Pearson r of simulated vs true "
             "activations), its utility, and the explainer-independent reward alignment (correlation of activation "
             "with the token\u2019s utility; sign share of its strongest tokens). Token shading: activation 0..10."]
    parts.append("</p>")
    failed = sum(int(_float(f.get("simulation_failures")) or 0) for f in features)
    if failed:
        parts.append(f'<p class="note">{failed} simulation{"s" if failed > 1 else ""} could not be parsed (twice) and '
                     "scored as a constant prediction (correlation 0); column “sim. failed”.</p>")
    scoring = (results.get("utility") or {}).get("scoring") or {}
    parts.append(scoring_summary_html(scoring))
    for model in models:
        rows = sorted((f for f in features if str(f.get("model", "?")) == model), key=_layer)
        explainers = sorted({str(f.get("explainer")) for f in rows if f.get("explainer")})
        parts.append(f'<h3 id="features-{_esc(model)}">{_esc(model)} '
                     f'<span class="note">({len(rows)} features; explainer: {_esc(", ".join(explainers) or "-")})</span></h3>')
        extra = scored_columns(rows)
        headers = ["block", "feature", "max cos", "explanation and top examples", "sim. score (null)", "utility",
                   "reward corr", "sign share", *[h for h, _ in extra], *(["sim. failed"] if failed else [])]
        parts.append(html_table(headers,
                                [[f.get("layer"), f.get("feature"), _float(f.get("max_cosine")), explanation_cell(f),
                                  simulation_cell(f), _float(f.get("utility")), _float(f.get("reward_corr")),
                                  _float(f.get("sign_share")), *[cell(f) for _, cell in extra],
                                  *([f.get("simulation_failures")] if failed else [])]
                                 for f in rows],
                                numeric={0, 1, 2, 5, 6, 7}, cls="features"))
    return "".join(parts)


def new_features_html(results: dict) -> str:
    new = results.get("new_features")
    if new is None:
        return not_run_html()
    parts = ['<p class="note">Tuned-model features whose closest feature in the base model\u2019s small dictionaries '
             "(same block, every base seed) has a cosine below the block\u2019s threshold: what RLHF may have added; "
             "explained and scored like the top features, but not part of the headline numbers.</p>"]
    counts = _new_counts(results)
    if counts:
        lead, rows = counts
        parts.append(f"<p>{_esc(lead)}</p>" + html_table(_COUNT_HEADERS, rows, numeric={0, 1, 3, 4}))
    if not new:
        return "".join(parts) + "<p>No tuned feature is far from every base feature at the chosen threshold.</p>"
    rows = sorted(new, key=lambda r: (_layer(r), _float(r.get("max_cosine_to_base")) or 0.0))
    words = _table_words_text(results)
    return ("".join(parts) + (f"<p>{_esc(words)}</p>" if words else "")
            + html_table([*_NEW_HEADERS[:3], "explanation and top examples", *_NEW_HEADERS[4:], "sign share"],
                         [[r.get("layer"), r.get("feature"), _float(r.get("max_cosine_to_base")), explanation_cell(r),
                           _float(r.get("score")), _float(r.get("utility")), _float(r.get("reward_corr")),
                           _float(r.get("sign_share"))] for r in rows],
                         numeric={0, 1, 2, 4, 5, 6, 7}, cls="features"))


def utility_html(results: dict) -> str:
    utility = results.get("utility")
    if not utility:
        return not_run_html()
    models, rows = _utility_rows(results)
    if not rows:
        return not_run_html("no per-block scores")
    aligned = [m for m in models if any(align[m] is not None for _, _, align in rows)]
    has_alignment = bool(aligned)
    headers = ["block"] + [f"utility: {m}" for m in models] + [f"reward alignment: {m}" for m in aligned]
    table_rows = []
    for layer, util, align in rows:
        row = [Raw(f"<strong>{_esc(layer)}</strong>") if layer == "total" else layer] + [util[m] for m in models]
        table_rows.append(row + [align[m] for m in aligned])
    numeric = set(range(len(headers)))
    intro = (f'<p>Per explanation: |{_esc(utility.get("aggregate", "mean"))}| of the utility-table '
             f'({_esc(utility.get("table", "?"))}) values of its words; per model: the sum over explained features. '
             "Reward alignment is the explainer-independent score: the sum over features of the share of their "
             "top-activating tokens with positive utility minus the share with negative utility.</p>")
    explainer = ((results.get("config") or {}).get("interp") or {}).get("explainer")
    if explainer and explainer != "openai":
        intro += (f'<p class="note">Explanations here come from the {_esc(explainer)} explainer, not GPT-4 as in the '
                  "paper: these utility scores are not comparable with the paper's Table 3.</p>")
    per_block = [(layer, util, align) for layer, util, align in rows if layer != "total"]
    plot = ""
    if per_block:
        fig, axes = _figure(10.5, 3.0, ncols=2 if has_alignment else 1)
        groups = [layer for layer, _, _ in per_block]
        for ax, (index, title) in zip(axes, ((1, "utility score per block"), (2, "reward alignment per block"))):
            series = {m: {row[0]: (row[index][m], None, []) for row in per_block if row[index][m] is not None}
                      for m in models}
            _grouped_bars(ax, groups, {m: bars for m, bars in series.items() if bars}, legend=ax is axes[-1])
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel("block")
        plot = _img(_png_uri(fig), "utility score and reward alignment per block")
    control = control_highest_text(utility_control_highest(rows))
    effects = effect_rows(utility.get("scoring") or {})
    beside = ("<p>Beside the utility score of the explanations, a causal measure of the same thing: what each "
              "feature does to the output, read through the reward (the reward effect, TokenChange; first SAE seed)."
              "</p>" + html_table(EFFECT_HEADERS, effects, numeric={1, 2, 3, 4})) if effects else ""
    return (intro + html_table(headers, table_rows, numeric=numeric, cls="utility")
            + (f"<p>{_esc(control)}</p>" if control else "") + beside + plot)
