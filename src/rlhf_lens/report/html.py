"""report.html: one section renderer per `SECTIONS` id, CSS inline, no JavaScript, no network."""

from __future__ import annotations

import json
import math
from typing import Any

from .format import (
    _COUNT_HEADERS,
    _NEW_HEADERS,
    _SAE_METRICS,
    NOT_RUN,
    SECTIONS,
    _color,
    _esc,
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
from .plots import _figure, _grouped_bars, _headline_plot, _img, _png_uri, _ppo_plot
from .verdict import _verdict_parts, verdict

_MAX_INLINE_EXAMPLES = 1  # the rest of a feature's examples sit in a <details> (no JS needed)


_MAX_PPO_EXAMPLES = 8


class _Raw(str):
    """A table cell that is already HTML (escaped where needed)."""


def _cell(value: Any) -> tuple[str, bool]:
    """(html, is_number) of one table cell."""
    if isinstance(value, _Raw):
        return str(value), False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _esc(_num(value)), True
    return _esc("-" if value is None else value), False


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None, cls: str = "") -> str:
    """An HTML table; numbers (and the columns named in `numeric`) right-aligned."""
    numeric = numeric or set()
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{_esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            text, is_num = _cell(value)
            cells.append(f'<td{" class=num" if is_num or i in numeric else ""}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    # The wrapper scrolls a wide table sideways instead of widening the page.
    return f'<div class="wrap"><table{attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _not_run(what: str = "") -> str:
    return f'<p class="not-run">{NOT_RUN}{_esc(": " + what) if what else ""}</p>'


def _headline_html(results: dict) -> str:
    rows = results.get("headline")
    if not rows:
        return _not_run()
    table_rows = []
    for row in rows:
        level, _, _ = _verdict_parts(row.get("base"), row.get("tuned"))
        text = row.get("verdict") or verdict(_stat(row.get("base")), _stat(row.get("tuned")))
        klass = {"clear": "yes", "weak": "maybe"}.get(level, "no")
        table_rows.append([row.get("name", "?"), _Raw(_esc(_mean_std(row.get("base")))),
                           _Raw(_esc(_mean_std(row.get("tuned")))),
                           _Raw(_esc(_mean_std(row.get("control"))) if row.get("control") is not None else "-"),
                           row.get("n_seeds"), _Raw(f'<span class="verdict {klass}">{_esc(text)}</span>')])
    table = _table(["measure", "base", "tuned", "control", "seeds", "verdict"], table_rows, numeric={1, 2, 3, 4},
                   cls="headline")
    plot = _headline_plot(rows)
    note = ('<p class="note">mean \u00b1 std over SAE seeds. Verdict rule: spread = sqrt(std<sub>base</sub>\u00b2 + '
            'std<sub>tuned</sub>\u00b2); |tuned \u2212 base| above 2\u00d7 spread is larger than seed noise, above '
            '1\u00d7 is suggestive, otherwise not distinguishable. "Reward alignment" needs no explainer.</p>')
    diff = results.get("diff")
    if diff:
        from .diff import same_token_rows

        same = same_token_rows(results)
        if same:
            table += ('<p>On the same tokens (base and tuned compared directly, no dictionaries; details in '
                      '<a href="#diff">What tuning changed</a>):</p>'
                      + _table(["measure", "value", "null", "verdict"], same, numeric={1}, cls="headline-diff"))
    return table + note + plot


def _ppo_html(results: dict) -> str:
    ppo = results.get("ppo")
    if not ppo:
        return _not_run("no PPO in this run (an already tuned model, or the stage was skipped)")
    parts = []
    log = [r for r in (ppo.get("log") or []) if isinstance(r, dict)]
    if log:
        last = log[-1]
        parts.append(f'<p>{len(log)} PPO steps; last step: reward {_num(_float(last.get("reward")))}, '
                     f'KL {_num(_float(last.get("kl")))} nats, \u03b2 {_num(_float(last.get("beta")))}.</p>')
        parts.append(_ppo_plot(log))
    else:
        parts.append(_not_run("no training log"))
    evaluation = ppo.get("eval")
    if evaluation:
        parts.append(f'<h3>Held-out reward ({_esc(_num(evaluation.get("n")))} prompts)</h3>')
        rows = []
        for name in ("base", "tuned"):
            e = evaluation.get(name) or {}
            mean, se = _float(e.get("mean")), _float(e.get("se"))
            rows.append([name, _Raw(_esc("-" if mean is None else f"{_num(mean)} \u00b1 {_num(se)}")),
                         _Raw(_pct(e.get("positive_frac")))])
        parts.append(_table(["model", "mean reward \u00b1 se", "positive"], rows, numeric={1, 2}))
        examples = [e for e in (evaluation.get("examples") or []) if isinstance(e, dict)][:_MAX_PPO_EXAMPLES]
        if examples:
            parts.append("<h3>Completions</h3>")
            parts.append(_table(["prompt", "base", "tuned"],
                                [[e.get("prompt"), e.get("base"), e.get("tuned")] for e in examples], cls="texts"))
    else:
        parts.append(_not_run("no held-out evaluation"))
    return "".join(parts)


def _divergence_html(results: dict) -> str:
    divergence = results.get("divergence")
    rows = [r for r in ((divergence or {}).get("rows") or []) if isinstance(r, dict) and _float(r.get("divergence")) is not None]
    if not rows:
        return _not_run()
    top = {int(x) for x in (divergence.get("top_layers") or []) if _float(x) is not None}
    by_layer = sorted(rows, key=_layer)
    values = [_float(r["divergence"]) for r in by_layer]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    spread = (f'<p>Blocks analysed: <strong>{_esc(", ".join(map(str, sorted(top))) or "-")}</strong>. '
              f'Divergence over {len(values)} blocks: mean {_num(mean)}, std {_num(std)} '
              f'({_num(100 * std / mean if mean else 0.0)}% of the mean), range {_num(min(values))}..{_num(max(values))}.</p>')

    # Right panel: deviation from the mean, so nearly equal blocks (as under Adam) are still told apart.
    fig, (ax, ax_dev) = _figure(min(11.0, 0.5 * len(by_layer) + 6.0), 3.0, ncols=2)
    layers = [_layer(r) for r in by_layer]
    colors = [_color("tuned") if layer in top else "#9e9e9e" for layer in layers]
    ax.bar(range(len(layers)), values, color=colors)
    ax.axhline(mean, color="black", linewidth=1)
    ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)
    ax.set_ylabel("\u03a3 \u2016base \u2212 tuned\u2016$_F$")
    ax.set_title("Divergence (red: analysed; line, band: mean \u00b1 1 std)", fontsize="medium")
    ax_dev.bar(range(len(layers)), [100 * (v / mean - 1) if mean else 0.0 for v in values], color=colors)
    ax_dev.axhline(0, color="black", linewidth=0.8)
    ax_dev.set_ylabel("vs mean (%)")
    ax_dev.set_title("Deviation from the mean", fontsize="medium")
    for axis in (ax, ax_dev):
        axis.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        axis.set_xlabel("block")
    # Beside it, the diff stage's causal ranking: which block's own change carries the reward.
    ranked = {int(r["layer"]): r for r in (((results.get("diff") or {}).get("ranking") or {}).get("rows") or [])
              if isinstance(r, dict) and _float(r.get("layer")) is not None}
    rank = divergence.get("rank") or "parameters"
    spread += (f'<p class="note">Analysed blocks chosen by <strong>{_esc(rank)}</strong> '
               f'(<code>divergence.rank</code>); by parameters they would be '
               f'{_esc(", ".join(map(str, divergence.get("by_parameters") or [])) or "-")}. "Causal gain": reward gain of '
               "steering the base model by the block's own change (diff stage), where the block was ranked.</p>"
               if ranked else "")
    causal = ["causal gain", "causal rank"] if ranked else []
    table = _table(["block", "divergence", "vs mean", *causal, "analysed"],
                   [[_layer(r), _float(r["divergence"]), _Raw(_esc(f"{100 * (_float(r['divergence']) / mean - 1):+.2f}%"
                                                                   if mean else "-")),
                     *([_float(ranked.get(_layer(r), {}).get("gain")), ranked.get(_layer(r), {}).get("rank")]
                       if ranked else []),
                     "yes" if _layer(r) in top else ""] for r in by_layer], numeric={2, 3, 4} if ranked else {2})
    return spread + _img(_png_uri(fig), "layer divergence per block") + table


def _saes_html(results: dict) -> str:
    saes = results.get("saes")
    if not saes:
        return _not_run()
    table_rows = []
    for g in _sae_groups(saes):
        m = g["metrics"]
        warnings = g["warnings"]
        table_rows.append([g["model"], g["layer"], g["dict_size"], g["arch"], _Raw(_esc(g["l1"])), len(g["seeds"]),
                           *(_Raw(_esc(_metric_text(m[name], percent=name == "dead_fraction")))
                             for name in _SAE_METRICS),
                           _Raw('<span class="warn">' + "<br>".join(map(_esc, warnings)) + "</span>" if warnings else "")])
    converged = [r for r in saes if isinstance(r, dict) and r.get("converged") is not None]
    stopped = ""
    if converged:
        still = [r for r in saes if isinstance(r, dict) and r.get("still_improving")]
        reasons = sorted({str(r.get("stop_reason")) for r in converged})
        stopped = (f'<p>Stopping: {sum(bool(r.get("converged")) for r in converged)} of {len(converged)} SAEs converged '
                   f'(held-out loss plateaued); stop reasons: {_esc(", ".join(reasons))}. '
                   + (f'<span class="warn">{len(still)} stopped while their held-out loss was still falling '
                      "(not converged: read their features with care).</span>" if still else "") + "</p>")
    return (stopped + _table(["model", "block", "dict size", "arch", "l1", "seeds", "MSE", "FVU", "L0", "dead",
                              "tokens/s", "warnings"], table_rows, numeric={1, 2, 4, 5, 6, 7, 8, 9, 10}, cls="saes")
            + _loss_curves(saes)
            + '<p class="note">One row per model, block and size: mean \u00b1 std over seeds (per-seed rows are in '
              "results.json); l1: the value used, a range when target_l0 calibrated it per seed. FVU: fraction of "
              "variance unexplained; L0: mean active features per token; dead: share of features that never fired on "
              "the training tokens.</p>")


def _loss_curves(saes: list[dict]) -> str:
    """Small multiples: held-out loss against step, one panel per model and block, one line per size and seed."""
    panels: dict[tuple, list[dict]] = {}
    for r in saes:
        if isinstance(r, dict) and r.get("curve"):
            panels.setdefault((str(r.get("model", "?")), _layer(r)), []).append(r)
    if not panels:
        return ""
    keys = sorted(panels, key=lambda k: (_model_key(k[0]), k[1]))
    cols = min(4, len(keys))
    fig, axes = _figure(2.6 * cols, 2.2 * ((len(keys) + cols - 1) // cols), ncols=cols,
                        nrows=(len(keys) + cols - 1) // cols)
    for ax, key in zip(axes, keys):
        for i, r in enumerate(sorted(panels[key], key=lambda r: (_float(r.get("dict_size")) or 0, str(r.get("seed"))))):
            points = [(c.get("step"), _float(c.get("heldout_loss"))) for c in r["curve"] if _float(c.get("heldout_loss"))]
            if points:
                ax.plot(*zip(*points), color=_color(key[0], i), linewidth=1,
                        linestyle="-" if r.get("converged") else "--", label=f"m{r.get('dict_size')} s{r.get('seed')}")
        ax.set_title(f"{key[0]}, block {key[1]}", fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="xx-small")
    return ('<p class="note">Held-out loss against the training step (dashed: stopped before it converged).</p>'
            + _img(_png_uri(fig), "held-out loss curves of the SAEs"))


def _mmcs_html(results: dict) -> str:
    mmcs = results.get("mmcs")
    if not mmcs:
        return _not_run()
    rows = sorted(mmcs, key=lambda r: (str(r.get("kind", "")) != "within", _model_key(str(r.get("model", ""))), _layer(r)))
    layers = sorted({_layer(r) for r in rows})
    series: dict[str, dict] = {}
    colors: dict[str, str] = {}
    for r in rows:
        mean = _float(r.get("mean"))
        if mean is None:
            continue
        label = f"{r.get('model')} ({r.get('kind')})" if r.get("kind") else str(r.get("model"))
        values = [v for v in (_float(x) for x in (r.get("values") or [])) if v is not None]
        series.setdefault(label, {})[_layer(r)] = (mean, _float(r.get("std")), values)
        colors.setdefault(label, _color(str(r.get("model")), len(colors)))
    plot = ""
    if series:
        fig, (ax,) = _figure(min(11.0, 1.2 * len(layers) * max(1, len(series)) / 2 + 4.0), 3.2)
        _grouped_bars(ax, layers, series, with_values=True, colors=colors)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("block")
        ax.set_ylabel("MMCS")
        ax.set_title("Mean max cosine similarity per block (bars: mean over seeds, dots: seeds)", fontsize="medium")
        plot = _img(_png_uri(fig), "MMCS per block")
    table = _table(["model", "block", "kind", "MMCS mean \u00b1 std", "per seed"],
                   [[r.get("model"), r.get("layer"), r.get("kind"), _Raw(_esc(_mean_std(r))),
                     ", ".join(_num(_float(v)) for v in (r.get("values") or []))] for r in rows], numeric={3})
    note = ('<p class="note">within: small vs large dictionary of the same model and block (features both agree on); '
            "across: tuned vs base dictionaries at the same block.</p>")
    return plot + table + note


def _token_span(token: Any, activation: Any) -> str:
    text = str(token).replace("\r\n", "\n").replace("\r", "\n")
    shown = text.replace("\n", "\u21b5").replace("\t", "\u21e5")
    value = _float(activation) or 0.0
    alpha = min(1.0, max(0.0, value / 10.0))
    title = f"activation {_num(activation if isinstance(activation, (int, float)) else value)}"
    return (f'<span class="tok" style="background-color: rgba(255, 127, 14, {alpha:.2f})" '
            f'title="{_esc(title)}">{_esc(shown) if shown else "&#8203;"}</span>')


def _example_html(example: dict) -> str:
    tokens = example.get("tokens") or []
    activations = list(example.get("activations") or [])
    activations += [0] * (len(tokens) - len(activations))
    spans = "".join(_token_span(t, a) for t, a in zip(tokens, activations))
    info = f'doc {_esc(example.get("doc", "?"))}, max {_esc(_num(_float(example.get("max_activation"))))}'
    return f'<div class="example"><span class="exinfo">{info}</span>{spans}</div>'


def _explanation_cell(feature: dict) -> _Raw:
    explanation = feature.get("explanation")
    parts = [f'<div class="expl">{_esc(explanation) if explanation else "<em>not explained</em>"}</div>']
    examples = [e for e in (feature.get("examples") or []) if isinstance(e, dict)]
    parts += [_example_html(e) for e in examples[:_MAX_INLINE_EXAMPLES]]
    rest = examples[_MAX_INLINE_EXAMPLES:]
    if rest:
        parts.append(f"<details><summary>{len(rest)} more example{'s' if len(rest) > 1 else ''}</summary>"
                     + "".join(_example_html(e) for e in rest) + "</details>")
    return _Raw("".join(parts))


def _features_html(results: dict) -> str:
    features = results.get("features")
    if not features:
        return _not_run()
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
    for model in models:
        rows = sorted((f for f in features if str(f.get("model", "?")) == model), key=_layer)
        explainers = sorted({str(f.get("explainer")) for f in rows if f.get("explainer")})
        parts.append(f'<h3 id="features-{_esc(model)}">{_esc(model)} '
                     f'<span class="note">({len(rows)} features; explainer: {_esc(", ".join(explainers) or "-")})</span></h3>')
        parts.append(_table(["block", "feature", "max cos", "explanation and top examples", "sim. score", "utility",
                             "reward corr", "sign share", *(["sim. failed"] if failed else [])],
                            [[f.get("layer"), f.get("feature"), _float(f.get("max_cosine")), _explanation_cell(f),
                              _float(f.get("score")), _float(f.get("utility")), _float(f.get("reward_corr")),
                              _float(f.get("sign_share")), *([f.get("simulation_failures")] if failed else [])]
                             for f in rows],
                            numeric={0, 1, 2, 4, 5, 6, 7, 8}, cls="features"))
    return "".join(parts)


def _new_features_html(results: dict) -> str:
    new = results.get("new_features")
    if new is None:
        return _not_run()
    parts = ['<p class="note">Tuned-model features whose closest feature in the base model\u2019s small dictionaries '
             "(same block, every base seed) has a cosine below the block\u2019s threshold: what RLHF may have added; "
             "explained and scored like the top features, but not part of the headline numbers.</p>"]
    counts = _new_counts(results)
    if counts:
        lead, rows = counts
        parts.append(f"<p>{_esc(lead)}</p>" + _table(_COUNT_HEADERS, rows, numeric={0, 1, 3, 4}))
    if not new:
        return "".join(parts) + "<p>No tuned feature is far from every base feature at the chosen threshold.</p>"
    rows = sorted(new, key=lambda r: (_layer(r), _float(r.get("max_cosine_to_base")) or 0.0))
    words = _table_words_text(results)
    return ("".join(parts) + (f"<p>{_esc(words)}</p>" if words else "")
            + _table([*_NEW_HEADERS[:3], "explanation and top examples", *_NEW_HEADERS[4:], "sign share"],
                     [[r.get("layer"), r.get("feature"), _float(r.get("max_cosine_to_base")), _explanation_cell(r),
                       _float(r.get("score")), _float(r.get("utility")), _float(r.get("reward_corr")),
                       _float(r.get("sign_share"))] for r in rows],
                     numeric={0, 1, 2, 4, 5, 6, 7}, cls="features"))


def _utility_html(results: dict) -> str:
    utility = results.get("utility")
    if not utility:
        return _not_run()
    models, rows = _utility_rows(results)
    if not rows:
        return _not_run("no per-block scores")
    aligned = [m for m in models if any(align[m] is not None for _, _, align in rows)]
    has_alignment = bool(aligned)
    headers = ["block"] + [f"utility: {m}" for m in models] + [f"reward alignment: {m}" for m in aligned]
    table_rows = []
    for layer, util, align in rows:
        row = [_Raw(f"<strong>{_esc(layer)}</strong>") if layer == "total" else layer] + [util[m] for m in models]
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
    return intro + _table(headers, table_rows, numeric=numeric, cls="utility") + plot


def _config_html(results: dict) -> str:
    config = results.get("config")
    if not config:
        return _not_run("no config recorded")
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    return f"<details><summary>resolved config</summary><pre>{_esc(text)}</pre></details>"


def _diff_html(results: dict) -> str:
    diff = results.get("diff")
    if not diff:
        return _not_run("the diff stage")
    from .diff import decompose_html, diff_html  # it builds on this module's table helpers

    decompose = results.get("decompose")
    return diff_html(diff) + (decompose_html(decompose) if decompose else "")


_SECTION_RENDERERS = {
    "headline": _headline_html, "diff": _diff_html, "ppo": _ppo_html, "divergence": _divergence_html, "saes": _saes_html,
    "mmcs": _mmcs_html, "features": _features_html, "new-features": _new_features_html, "utility": _utility_html,
    "config": _config_html,
}


_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
       "DejaVu Sans", "Liberation Sans", sans-serif; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 28px; }
header { padding-top: 26px; }
h1 { font-size: 27px; margin: 0 0 2px; }
h2 { font-size: 20px; margin: 38px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
.meta, .note { color: var(--muted); }
.note { font-size: 13px; margin: 4px 0 10px; }
nav { position: sticky; top: 0; z-index: 1; background: rgba(255, 255, 255, 0.96);
      border-bottom: 1px solid var(--line); padding: 7px 28px; font-size: 14px; }
nav div { max-width: 1124px; margin: 0 auto; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--alt); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.models td:first-child { font-weight: 600; }
table.features td:nth-child(4) { min-width: 440px; }
table.texts td { max-width: 360px; }
.not-run { color: var(--muted); font-style: italic; background: var(--alt); padding: 8px 12px; border-radius: 6px; }
.verdict.yes { color: #1a7f37; font-weight: 600; }
.verdict.maybe { color: #9a6700; }
.verdict.no { color: var(--muted); }
.warn { color: #9a6700; font-size: 12px; display: inline-block; min-width: 200px; }
.wrap { max-width: 100%; overflow-x: auto; }
table.saes { font-size: 12.5px; }
img.plot { display: block; max-width: 100%; height: auto; margin: 8px 0 12px; }
.expl { margin-bottom: 3px; }
.example { font: 12.5px/1.75 ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; margin: 1px 0; }
.exinfo { color: var(--muted); font: 11px system-ui, "DejaVu Sans", sans-serif; margin-right: 8px; }
.tok { white-space: pre-wrap; border-radius: 2px; }
details summary { color: var(--accent); font-size: 12.5px; cursor: pointer; }
pre { background: var(--alt); padding: 10px 12px; border-radius: 6px; font-size: 12.5px; overflow-x: auto; }
footer { color: var(--muted); font-size: 12.5px; padding-top: 30px; padding-bottom: 30px; }
"""


# Nothing leaves the page: images only from data: URIs, styles only inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_html(results: dict) -> str:
    """The whole report page (a string), from results.json's content."""
    from .. import __version__

    title = str(results.get("title") or "rlhf-lens run")
    models = results.get("models") or {}
    model_rows = [[name, models.get(name) if models.get(name) is not None else _Raw('<span class="note">none</span>')]
                  for name in sorted(models, key=_model_key)]
    meta = " \u00b7 ".join(_esc(x) for x in (results.get("created"), results.get("run_dir")) if x)
    nav = "\n".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{_esc(name)}</h2>{_SECTION_RENDERERS[sid](results)}</section>'
                       for sid, name in SECTIONS)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f'<header><h1>{_esc(title)}</h1><p class="meta">{meta}</p>'
        + (_table(["model", "spec"], model_rows, cls="models") if model_rows else "")
        + f"</header>\n<nav><div>{nav}</div></nav>\n<main>{sections}</main>\n"
        f"<footer>Written by rlhf-lens {_esc(__version__)} from results.json.</footer></body></html>\n"
    )
