"""Figures drawn with matplotlib's Agg renderer, embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

from .format import _color, _esc, _float, _stat


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """A figure and its axes as a flat list (row by row)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
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
