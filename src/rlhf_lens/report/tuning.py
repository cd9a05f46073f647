"""The PPO and layer-divergence sections of report.html."""

from __future__ import annotations

import math

from .format import _color, _esc, _float, _layer, _num, _pct, elsewhere_text, steering_rewards_text, tuned_elsewhere
from .gold import _mean_se, gold_parts
from .plots import _figure, _img, _png_uri, _ppo_plot
from .tables import Raw, html_table, not_run_html, parts_html

_MAX_PPO_EXAMPLES = 8


def ppo_html(results: dict) -> str:
    ppo = results.get("ppo")
    if not ppo:
        return not_run_html("no PPO in this run (an already tuned model, or the stage was skipped)")
    parts = [f"<p>{_esc(elsewhere_text(results))}</p>"] if tuned_elsewhere(results) else []
    log = [r for r in (ppo.get("log") or []) if isinstance(r, dict)]
    if log:
        last = log[-1]
        parts.append(f'<p>{len(log)} PPO steps; last step: reward {_num(_float(last.get("reward")))}, '
                     f'KL {_num(_float(last.get("kl")))} nats, \u03b2 {_num(_float(last.get("beta")))}.</p>')
        parts.append(_ppo_plot(log))
    elif not tuned_elsewhere(results):
        parts.append(not_run_html("no training log"))
    parts.append(parts_html(gold_parts(results)))
    evaluation = ppo.get("eval")
    if evaluation:
        parts.append(f'<h3>Held-out reward ({_esc(_num(evaluation.get("n")))} prompts)</h3>')
        rows = []
        gold = evaluation.get("gold")  # the gold's reward of both (gold.spec), when the run had one
        for name in ("base", "tuned"):
            e = evaluation.get(name) or {}
            mean, se = _float(e.get("mean")), _float(e.get("se"))
            rows.append([name, Raw(_esc("-" if mean is None else f"{_num(mean)} \u00b1 {_num(se)}")),
                         Raw(_pct(e.get("positive_frac"))), *([_mean_se(gold.get(name))] if gold else [])])
        parts.append(html_table(["model", "mean reward \u00b1 se", "positive",
                                 *([f"gold ({gold.get('spec')}) \u00b1 se"] if gold else [])], rows,
                                numeric={1, 2, 3} if gold else {1, 2}))
        other = steering_rewards_text(results)
        if other:
            parts.append(f'<p class="note">{_esc(other)}</p>')
        parts += [f'<p class="note">{_esc(note)}</p>' for note in evaluation.get("prompt_notes") or []]
        examples = [e for e in (evaluation.get("examples") or []) if isinstance(e, dict)][:_MAX_PPO_EXAMPLES]
        if examples:
            parts.append("<h3>Completions</h3>")
            parts.append(html_table(["prompt", "base", "tuned"],
                                    [[e.get("prompt"), e.get("base"), e.get("tuned")] for e in examples], cls="texts"))
    else:
        parts.append(not_run_html("no held-out evaluation"))
    return "".join(parts)


def divergence_html(results: dict) -> str:
    divergence = results.get("divergence")
    rows = [r for r in ((divergence or {}).get("rows") or []) if isinstance(r, dict) and _float(r.get("divergence")) is not None]
    if not rows:
        return not_run_html()
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
               "the base model with the tuned model's block in place of its own (diff stage), where the block was ranked.</p>"
               if ranked else "")
    causal = ["causal gain", "causal rank"] if ranked else []
    table = html_table(["block", "divergence", "vs mean", *causal, "analysed"],
                       [[_layer(r), _float(r["divergence"]), Raw(_esc(f"{100 * (_float(r['divergence']) / mean - 1):+.2f}%"
                                                                      if mean else "-")),
                         *([_float(ranked.get(_layer(r), {}).get("gain")), ranked.get(_layer(r), {}).get("rank")]
                           if ranked else []),
                         "yes" if _layer(r) in top else ""] for r in by_layer], numeric={2, 3, 4} if ranked else {2})
    return spread + _img(_png_uri(fig), "layer divergence per block") + table
