"""The sparse-autoencoder and MMCS sections of report.html."""

from __future__ import annotations

from .format import _SAE_METRICS, _color, _esc, _float, _layer, _mean_std, _metric_text, _model_key, _num, _sae_groups
from .plots import _figure, _grouped_bars, _img, _png_uri
from .tables import Raw, html_table, not_run_html


def saes_html(results: dict) -> str:
    saes = results.get("saes")
    if not saes:
        return not_run_html()
    table_rows = []
    for g in _sae_groups(saes):
        m = g["metrics"]
        warnings = g["warnings"]
        table_rows.append([g["model"], g["layer"], g["dict_size"], g["arch"], Raw(_esc(g["l1"])), len(g["seeds"]),
                           *(Raw(_esc(_metric_text(m[name], percent=name == "dead_fraction")))
                             for name in _SAE_METRICS),
                           Raw('<span class="warn">' + "<br>".join(map(_esc, warnings)) + "</span>" if warnings else "")])
    converged = [r for r in saes if isinstance(r, dict) and r.get("converged") is not None]
    stopped = ""
    if converged:
        still = [r for r in saes if isinstance(r, dict) and r.get("still_improving")]
        reasons = sorted({str(r.get("stop_reason")) for r in converged})
        stopped = (f'<p>Stopping: {sum(bool(r.get("converged")) for r in converged)} of {len(converged)} SAEs converged '
                   f'(held-out loss plateaued); stop reasons: {_esc(", ".join(reasons))}. '
                   + (f'<span class="warn">{len(still)} stopped while their held-out loss was still falling '
                      "(not converged: read their features with care).</span>" if still else "") + "</p>")
    return (stopped + html_table(["model", "block", "dict size", "arch", "l1", "seeds", "MSE", "FVU", "L0", "dead",
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


def mmcs_html(results: dict) -> str:
    mmcs = results.get("mmcs")
    if not mmcs:
        return not_run_html()
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
    table = html_table(["model", "block", "kind", "MMCS mean \u00b1 std", "per seed"],
                       [[r.get("model"), r.get("layer"), r.get("kind"), Raw(_esc(_mean_std(r))),
                         ", ".join(_num(_float(v)) for v in (r.get("values") or []))] for r in rows], numeric={3})
    note = ('<p class="note">within: small vs large dictionary of the same model and block (features both agree on); '
            "across: tuned vs base dictionaries at the same block.</p>")
    return plot + table + note
