"""The report: a run's `results.json` rendered as one self-contained `report.html` and a `summary.md`.

The HTML embeds its plots as base64 PNG `data:` URIs (drawn here with matplotlib's Agg renderer
from the numbers in results.json), carries its CSS inline, needs no JavaScript, and forbids
every network request through a Content-Security-Policy, so it opens the same offline, mailed
or archived. Every section has a stable id (`SECTIONS`); a section whose stage was skipped
(missing or null in results.json) says "not run". All text from the run is HTML-escaped.

Headline numbers are shown as mean +- std over SAE seeds with the control beside them, and a
`verdict` line says plainly whether tuned - base exceeds the seed spread (rule in `verdict`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import read_json, write_text

# (id, title) of every section, in page order: the ids are stable (tests and links use them).
SECTIONS = (
    ("headline", "Headline numbers"),
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
_LIST_SECTIONS = ("saes", "mmcs", "features", "new_features", "headline")
_DICT_SECTIONS = ("models", "config", "ppo", "divergence", "utility", "new_feature_counts")
_MODEL_ORDER = ("base", "tuned", "control", "tuned-vs-base", "control-vs-base")
_COLORS = {"base": "#1f77b4", "tuned": "#d62728", "control": "#7f7f7f", "tuned-vs-base": "#9467bd",
           "control-vs-base": "#bcbd22"}
_EXTRA_COLORS = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#ff7f0e")
_MAX_INLINE_EXAMPLES = 1  # the rest of a feature's examples sit in a <details> (no JS needed)
_MAX_PPO_EXAMPLES = 8


def write_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Render RUN_DIR/results.json into RUN_DIR/report.html and RUN_DIR/summary.md (atomic writes).

    Returns (report.html, summary.md). Raises UserError when results.json is missing or malformed;
    files already there are then left as they were.
    """
    run_dir = Path(run_dir)
    results = _load_results(run_dir)
    page = render_html(results)
    summary = render_markdown(results)
    html_path, md_path = run_dir / "report.html", run_dir / "summary.md"
    write_text(html_path, page)
    write_text(md_path, summary)
    return html_path, md_path


def verdict(base: dict, tuned: dict) -> str:
    """One plain sentence: does tuned - base exceed the seed spread?

    `base` and `tuned` are {"mean": x, "std": s} over seeds, optionally with "n" (number of seeds)
    or "values" (one per seed). The rule: spread = sqrt(std_base^2 + std_tuned^2), the std of the
    difference between one tuned and one base seed. |tuned - base| > 2 x spread: larger than seed
    noise; > 1 x spread: suggestive, not conclusive; otherwise: not distinguishable from seed noise.
    With one seed, or no std given, there is no spread to compare against, and it says so.
    """
    level, diff, spread = _verdict_parts(base, tuned)
    if level == "missing":
        return "no comparison: the base or tuned value is missing"
    head = f"tuned - base = {_signed(diff)}"
    if level == "one-seed":
        return f"{head}; one seed: no spread to compare against"
    if level == "zero-spread":
        return f"{head}; the seed spread is 0: no spread to compare against"
    if level == "clear":
        return f"{head}, more than twice the combined seed spread ({_num(spread)}): larger than seed noise"
    if level == "weak":
        return f"{head}, above the combined seed spread ({_num(spread)}) but not twice it: suggestive, not conclusive"
    return f"{head}, within the combined seed spread ({_num(spread)}): not distinguishable from seed noise"


# --- reading and checking results.json --------------------------------------------------------


def _load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; give the --out folder of `rlhf-lens run`")
    if not path.is_file():
        raise UserError(f"{path}: no such file; run `rlhf-lens run --out {run_dir}` first (it writes results.json)")
    results = read_json(path)
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a JSON object of sections, got {type(results).__name__}; "
                        "regenerate it with `rlhf-lens run`")
    for key in _LIST_SECTIONS:
        value = results.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise UserError(f"{path}: section {key!r} must be a list of objects or null; regenerate it with `rlhf-lens run`")
    for key in _DICT_SECTIONS:
        value = results.get(key)
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{path}: section {key!r} must be an object or null; regenerate it with `rlhf-lens run`")
    return results


# --- small helpers: numbers, escaping, statistics ----------------------------------------------


def _float(x: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, text, NaN)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _num(x: Any, digits: int = 3) -> str:
    """A number for people: 3 significant digits, thousands separated; '-' when missing."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if abs(x) < 1e-12:  # float residue of a mean that is 0 (e.g. 6.9e-18), not a measurement
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    if x != 0 and abs(x) < 1e-4:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "") + _num(x)


def _pct(x: Any) -> str:
    value = _float(x)
    return "-" if value is None else f"{100 * value:.1f}%"


def _stat(d: Any) -> dict:
    """{"mean", "std", "n"} from a headline value: a dict (mean/std/n/values), a bare number or None."""
    if isinstance(d, dict):
        values = [v for v in (_float(x) for x in d.get("values") or []) if v is not None]
        n = d.get("n", len(values) if values else None)
        return {"mean": _float(d.get("mean")), "std": _float(d.get("std")), "n": n if isinstance(n, int) else None}
    return {"mean": _float(d), "std": None, "n": None}


def _mean_std(d: Any) -> str:
    s = _stat(d)
    if s["mean"] is None:
        return "-"
    if s["std"] is None or s["n"] == 1:  # one seed: a std of 0 would look like certainty
        return _num(s["mean"])
    return f"{_num(s['mean'])} \u00b1 {_num(s['std'], 2)}"


def _verdict_parts(base: Any, tuned: Any) -> tuple[str, float, float]:
    """(level, tuned - base, spread); level: missing, one-seed, zero-spread, clear, weak or within."""
    b, t = _stat(base), _stat(tuned)
    if b["mean"] is None or t["mean"] is None:
        return "missing", 0.0, 0.0
    diff = t["mean"] - b["mean"]
    if (b["n"] is not None and b["n"] < 2) or (t["n"] is not None and t["n"] < 2) or (b["std"] is None and t["std"] is None):
        return "one-seed", diff, 0.0
    spread = math.hypot(b["std"] or 0.0, t["std"] or 0.0)
    if spread == 0:
        return "zero-spread", diff, 0.0
    if abs(diff) > 2 * spread:
        return "clear", diff, spread
    if abs(diff) > spread:
        return "weak", diff, spread
    return "within", diff, spread


def _model_key(name: str) -> tuple[int, str]:
    return (_MODEL_ORDER.index(name) if name in _MODEL_ORDER else len(_MODEL_ORDER), name)


def _color(name: str, index: int = 0) -> str:
    return _COLORS.get(name, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def _layer(row: dict) -> int:
    value = _float(row.get("layer"))
    return int(value) if value is not None else -1


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


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


# --- plots (matplotlib Agg, no pyplot state), embedded as data: URIs ---------------------------


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _png_uri(fig) -> str:
    buffer = io.BytesIO()
    # No "Software" stamp: the same numbers give the same bytes.
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{_esc(alt)}">'


def _grouped_bars(ax, groups: list[Any], series: dict[str, dict], with_values: bool = False,
                  colors: dict[str, str] | None = None, legend: bool = True) -> None:
    """Bars per group (x) and series (colour); series[name] = {group: (mean, std|None, [values])}."""
    names = list(series)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, ys, errs, dots_x, dots_y = [], [], [], [], []
        for i, group in enumerate(groups):
            if group not in series[name]:
                continue
            mean, std, values = series[name][group]
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            ys.append(mean)
            errs.append(std or 0.0)
            if with_values and len(values) > 1:
                dots_x += [x] * len(values)
                dots_y += values
        if not xs:
            continue
        color = (colors or {}).get(name) or _color(name, j)
        ax.bar(xs, ys, width=width * 0.92, color=color, label=name, yerr=errs if any(errs) else None,
               capsize=3, error_kw={"elinewidth": 1, "ecolor": "black"})
        if dots_x:
            ax.scatter(dots_x, dots_y, s=9, color="black", zorder=3)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    if legend:
        ax.legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


# --- HTML sections -----------------------------------------------------------------------------


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
    return table + note + plot


def _headline_plot(rows: list[dict]) -> str:
    usable = [r for r in rows if _stat(r.get("base"))["mean"] is not None or _stat(r.get("tuned"))["mean"] is not None]
    if not usable:
        return ""
    fig, axes = _figure(min(11.0, 2.8 * len(usable) + 0.6), 2.6, ncols=len(usable))
    for ax, row in zip(axes, usable):
        names = [m for m in ("base", "tuned", "control") if row.get(m) is not None and _stat(row[m])["mean"] is not None]
        stats = [_stat(row[m]) for m in names]
        ax.bar(range(len(names)), [s["mean"] for s in stats], color=[_color(m) for m in names],
               yerr=[s["std"] or 0.0 for s in stats], capsize=4, error_kw={"elinewidth": 1})
        ax.set_xticks(range(len(names)), names)
        ax.set_title(str(row.get("name", "?")), fontsize="medium")
    return _img(_png_uri(fig), "headline numbers: base, tuned and control, mean and std over seeds")


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


def _ppo_plot(log: list[dict]) -> str:
    steps = [_float(r.get("step")) for r in log]
    steps = [s if s is not None else float(i + 1) for i, s in enumerate(steps)]
    fig, (ax_reward, ax_kl) = _figure(10.5, 3.0, ncols=2)
    reward = [_float(r.get("reward")) for r in log]
    pts = [(s, m, _float(r.get("reward_std"))) for s, m, r in zip(steps, reward, log) if m is not None]
    if pts:
        xs, ms, sds = zip(*pts)
        marker = "o" if len(xs) < 30 else None
        ax_reward.plot(xs, ms, color=_color("tuned"), marker=marker, markersize=3, label="mean reward")
        if all(sd is not None for sd in sds):
            ax_reward.fill_between(xs, [m - s for m, s in zip(ms, sds)], [m + s for m, s in zip(ms, sds)],
                                   color=_color("tuned"), alpha=0.15, label="\u00b11 std over the batch")
        ax_reward.legend(fontsize="small", frameon=False)
    ax_reward.set_title("reward", fontsize="medium")
    ax_reward.set_xlabel("PPO step")
    kl = [(s, v) for s, v in zip(steps, (_float(r.get("kl")) for r in log)) if v is not None]
    if kl:
        ax_kl.plot(*zip(*kl), color="#333333", marker="o" if len(kl) < 30 else None, markersize=3, label="KL (nats)")
    beta = [(s, v) for s, v in zip(steps, (_float(r.get("beta")) for r in log)) if v is not None]
    if beta:
        ax_beta = ax_kl.twinx()
        ax_beta.plot(*zip(*beta), color=_color("base"), linestyle="--", label="\u03b2 (KL weight)")
        ax_beta.set_ylabel("\u03b2", color=_color("base"))
        ax_beta.spines[["top"]].set_visible(False)
        lines = ax_kl.get_lines() + ax_beta.get_lines()
        ax_kl.legend(lines, [line.get_label() for line in lines], fontsize="small", frameon=False)
    elif kl:
        ax_kl.legend(fontsize="small", frameon=False)
    ax_kl.set_title("KL to the reference model", fontsize="medium")
    ax_kl.set_xlabel("PPO step")
    return _img(_png_uri(fig), "PPO curves: reward and KL per step")


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
    table = _table(["block", "divergence", "vs mean", "analysed"],
                   [[_layer(r), _float(r["divergence"]), _Raw(_esc(f"{100 * (_float(r['divergence']) / mean - 1):+.2f}%"
                                                                   if mean else "-")),
                     "yes" if _layer(r) in top else ""] for r in by_layer], numeric={2})
    return spread + _img(_png_uri(fig), "layer divergence per block") + table


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
    return (_table(["model", "block", "dict size", "arch", "l1", "seeds", "MSE", "FVU", "L0", "dead", "tokens/s",
                    "warnings"], table_rows, numeric={1, 2, 4, 5, 6, 7, 8, 9, 10}, cls="saes")
            + '<p class="note">One row per model, block and size: mean \u00b1 std over seeds (per-seed rows are in '
              "results.json); l1: the value used, a range when target_l0 calibrated it per seed. FVU: fraction of "
              "variance unexplained; L0: mean active features per token; dead: share of features that never fired on "
              "the training tokens.</p>")


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
    for model in models:
        rows = sorted((f for f in features if str(f.get("model", "?")) == model), key=_layer)
        explainers = sorted({str(f.get("explainer")) for f in rows if f.get("explainer")})
        parts.append(f'<h3 id="features-{_esc(model)}">{_esc(model)} '
                     f'<span class="note">({len(rows)} features; explainer: {_esc(", ".join(explainers) or "-")})</span></h3>')
        parts.append(_table(["block", "feature", "max cos", "explanation and top examples", "sim. score", "utility",
                             "reward corr", "sign share"],
                            [[f.get("layer"), f.get("feature"), _float(f.get("max_cosine")), _explanation_cell(f),
                              _float(f.get("score")), _float(f.get("utility")), _float(f.get("reward_corr")),
                              _float(f.get("sign_share"))] for f in rows],
                            numeric={0, 1, 2, 4, 5, 6, 7}, cls="features"))
    return "".join(parts)


_NEW_HEADERS = ["block", "feature", "max cos to base", "explanation", "sim. score", "utility", "reward corr"]


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


_SECTION_RENDERERS = {
    "headline": _headline_html, "ppo": _ppo_html, "divergence": _divergence_html, "saes": _saes_html,
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
    from . import __version__

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


# --- summary.md ----------------------------------------------------------------------------------


def _md(x: Any) -> str:
    """A Markdown table cell: one line, table and HTML characters escaped."""
    if x is None:
        return "-"
    text = _num(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)
    text = " ".join(text.split())
    for ch in "\\|<>`*_[]":
        text = text.replace(ch, "\\" + ch)
    return text or "-"


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    """summary.md: the report's tables in Markdown (no plots, no token highlights)."""
    out = [f"# {_md(results.get('title') or 'rlhf-lens run')}", ""]
    if results.get("created") or results.get("run_dir"):
        out += [" \u00b7 ".join(_md(x) for x in (results.get("created"), results.get("run_dir")) if x), ""]
    models = results.get("models") or {}
    if models:
        out += [_md_table(["model", "spec"], [[m, models.get(m) or "none"] for m in sorted(models, key=_model_key)]), ""]

    def section(sid: str, body: str | None) -> None:
        out.extend([f"## {dict(SECTIONS)[sid]}", "", body if body else f"_{NOT_RUN}_", ""])

    headline = results.get("headline")
    section("headline", _md_table(
        ["measure", "base", "tuned", "control", "seeds", "verdict"],
        [[r.get("name"), _mean_std(r.get("base")), _mean_std(r.get("tuned")),
          _mean_std(r.get("control")) if r.get("control") is not None else "-", r.get("n_seeds"),
          r.get("verdict") or verdict(_stat(r.get("base")), _stat(r.get("tuned")))] for r in headline])
        if headline else None)

    ppo = results.get("ppo") or {}
    body = []
    log = [r for r in (ppo.get("log") or []) if isinstance(r, dict)]
    if log:
        last = log[-1]
        body.append(f"{len(log)} PPO steps; last step: reward {_md(_float(last.get('reward')))}, "
                    f"KL {_md(_float(last.get('kl')))}, beta {_md(_float(last.get('beta')))}.")
    evaluation = ppo.get("eval")
    if evaluation:
        rows = []
        for name in ("base", "tuned"):
            e = evaluation.get(name) or {}
            rows.append([name, f"{_num(_float(e.get('mean')))} \u00b1 {_num(_float(e.get('se')))}",
                         _pct(e.get("positive_frac"))])
        body.append(f"Held-out reward over {_md(evaluation.get('n'))} prompts:\n\n"
                    + _md_table(["model", "mean reward \u00b1 se", "positive"], rows))
    section("ppo", "\n\n".join(body) if body else None)

    divergence = results.get("divergence") or {}
    rows = sorted((r for r in (divergence.get("rows") or []) if isinstance(r, dict)), key=_layer)
    top = {int(x) for x in (divergence.get("top_layers") or []) if _float(x) is not None}
    section("divergence", (f"Blocks analysed: {', '.join(map(str, sorted(top))) or '-'}\n\n"
                           + _md_table(["block", "divergence", "analysed"],
                                       [[r.get("layer"), _float(r.get("divergence")), "yes" if _layer(r) in top else ""]
                                        for r in rows])) if rows else None)

    saes = results.get("saes")
    section("saes", _md_table(
        ["model", "block", "dict size", "arch", "l1", "seeds", "MSE", "FVU", "L0", "dead", "warnings"],
        [[g["model"], g["layer"], g["dict_size"], g["arch"], g["l1"], len(g["seeds"]),
          *(_metric_text(g["metrics"][name], percent=name == "dead_fraction") for name in _SAE_METRICS[:4]),
          "; ".join(g["warnings"])] for g in _sae_groups(saes)]) if saes else None)

    mmcs = results.get("mmcs")
    section("mmcs", _md_table(["model", "block", "kind", "MMCS mean \u00b1 std", "seeds"],
                              [[r.get("model"), r.get("layer"), r.get("kind"), _mean_std(r), len(r.get("values") or [])]
                               for r in mmcs]) if mmcs else None)

    features = results.get("features")
    if features:
        parts = []
        for model in sorted({str(f.get("model", "?")) for f in features}, key=_model_key):
            rows = sorted((f for f in features if str(f.get("model", "?")) == model), key=_layer)
            parts.append(f"### {_md(model)}\n\n" + _md_table(
                ["block", "feature", "max cos", "explanation", "sim. score", "utility", "reward corr"],
                [[f.get("layer"), f.get("feature"), _float(f.get("max_cosine")), f.get("explanation"),
                  _float(f.get("score")), _float(f.get("utility")), _float(f.get("reward_corr"))] for f in rows]))
        section("features", "\n\n".join(parts))
    else:
        section("features", None)

    new = results.get("new_features")
    counts = _new_counts(results)
    parts = [counts[0], _md_table(_COUNT_HEADERS, counts[1])] if counts else []
    words = _table_words_text(results)
    section("new-features", None if new is None else "\n\n".join([*parts, *([words] if words else []), _md_table(
        _NEW_HEADERS, [[r.get("layer"), r.get("feature"), _float(r.get("max_cosine_to_base")), r.get("explanation"),
                        _float(r.get("score")), _float(r.get("utility")), _float(r.get("reward_corr"))]
                       for r in sorted(new, key=lambda r: (_layer(r), _float(r.get("max_cosine_to_base")) or 0.0))])])
        if new else "\n\n".join([*parts, "No new features at the chosen threshold."]))

    if results.get("utility"):
        models, rows = _utility_rows(results)
        utility = results["utility"]
        section("utility", (f"|{_md(utility.get('aggregate', 'mean'))}| of {_md(utility.get('table', '?'))} values "
                            "per explanation, summed; reward alignment: sum over features of (share of top tokens with U > 0 "
                            "minus share with U < 0).\n\n"
                            + _md_table(["block"] + [f"utility: {m}" for m in models]
                                        + [f"reward alignment: {m}" for m in models],
                                        [[layer] + [u[m] for m in models] + [a[m] for m in models]
                                         for layer, u, a in rows])) if rows else None)
    else:
        section("utility", None)
    return "\n".join(out).rstrip() + "\n"
