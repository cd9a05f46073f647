"""Proxy and gold against sqrt(KL) along a tune (Gao, Schulman & Hilton 2022, arXiv 2210.10760): `gold_curve`
fits their RL form R(d) = d (alpha - beta log d), d = sqrt(KL), to the change of each reward from the first
evaluation and names the overoptimisation point (the gold's fitted peak inside the observed range while the
proxy's fit still rises), with a bootstrap over prompts; `write_gold` writes gold.json and gold.png.

numpy and matplotlib only (no torch): the report draws the same figure from gold.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path, write_json

FORMAT = "rlhf-lens.gold"
MIN_EVALS = 3  # two parameters per fit, and at least one point beyond the first
TREND_Z = 2.0  # a change of at least this many standard errors counts as a rise (or a fall)
CONFIDENT_SHARE = 0.8  # a point is named when at least this share of prompt resamples has one too
MAX_LOG_PEAK = 50.0


def fit_rl_form(d: np.ndarray, change: np.ndarray) -> dict | None:
    """Least squares of change = alpha d - beta d log d (d log d = 0 at d = 0); None when d carries no spread."""
    d = np.asarray(d, dtype=float)
    dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    design = np.stack([d, -dlogd], 1)
    if np.linalg.matrix_rank(design) < 2:
        return None
    (alpha, beta), *_ = np.linalg.lstsq(design, np.asarray(change, dtype=float), rcond=None)
    rmse = float(np.sqrt(np.mean((design @ [alpha, beta] - change) ** 2)))
    # R'(d) = alpha - beta (log d + 1) = 0; a tiny beta puts the peak astronomically far: none in any run
    log_peak = alpha / beta - 1 if beta > 0 else None
    peak = float(np.exp(log_peak)) if log_peak is not None and log_peak < MAX_LOG_PEAK else None
    return {"alpha": float(alpha), "beta": float(beta), "peak": peak, "rmse": rmse}


def fitted(fit: dict, d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=float)
    return np.where(d > 0, d * (fit["alpha"] - fit["beta"] * np.log(np.where(d > 0, d, 1.0))), 0.0)


def _slope(fit: dict, d: float) -> float:
    return fit["alpha"] - fit["beta"] * (np.log(d) + 1) if d > 0 else fit["alpha"]


def _paired(first: np.ndarray, last: np.ndarray) -> dict:
    """Change of the mean from `first` to `last` (per prompt, paired), its standard error and the ratio."""
    diff = np.asarray(last, dtype=float) - np.asarray(first, dtype=float)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    change = float(diff.mean())
    # no spread (e.g. one prompt, or identical scores): no ratio; JSON holds no infinity
    return {"change": change, "se": se, "z": change / se if se > 0 else None}


def _z(pair: dict) -> str:
    return f"{pair['z']:+.1f} SEs" if pair["z"] is not None else f"{pair['change']:+.3g} (no spread)"


def _overoptimised(gold_fit: dict | None, proxy_fit: dict | None, d: np.ndarray) -> bool:
    """The gold's fitted peak lies inside the observed d range and the proxy's fit still rises there."""
    if not gold_fit or not proxy_fit or gold_fit["peak"] is None:
        return False
    peak = gold_fit["peak"]
    return bool(d.min() < peak < d.max()) and _slope(proxy_fit, peak) > 0


def _step_at(steps: list[int], d: np.ndarray, target: float) -> int:
    """The step where d first reaches `target`, interpolated between two evaluations."""
    for i in range(1, len(d)):
        if d[i] >= target:
            span = d[i] - d[i - 1]
            share = (target - d[i - 1]) / span if span > 0 else 1.0
            return int(round(steps[i - 1] + share * (steps[i] - steps[i - 1])))
    return steps[-1]


def _bootstrap(evals: list[dict], resamples: int, seed: int) -> dict | None:
    """Resample the prompts (the same resample at every evaluation), refit both, and collect the gold's peak."""
    arrays = [e.get("per_prompt") or {} for e in evals]
    if not all(a.get("gold") and a.get("proxy") and a.get("kl") for a in arrays):
        return None
    proxy, gold, kl = (np.array([a[k] for a in arrays], dtype=float) for k in ("proxy", "gold", "kl"))
    if proxy.shape != gold.shape or proxy.shape != kl.shape or proxy.shape[1] < 2:
        return None
    rng = np.random.default_rng(seed)
    n = proxy.shape[1]
    peaks, inside = [], 0
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        d = np.sqrt(np.clip(kl[:, idx].mean(1), 0, None))
        p, g = proxy[:, idx].mean(1), gold[:, idx].mean(1)
        gold_fit, proxy_fit = fit_rl_form(d, g - g[0]), fit_rl_form(d, p - p[0])
        if _overoptimised(gold_fit, proxy_fit, d):
            inside += 1
            peaks.append(gold_fit["peak"])
    low, high = (np.percentile(peaks, [2.5, 97.5]).tolist() if peaks else (None, None))
    return {"resamples": resamples, "seed": seed, "share_inside": inside / resamples, "low": low, "high": high}


def gold_curve(evals: list[dict], resamples: int = 1000, seed: int = 0) -> dict:
    """Proxy and gold against d = sqrt(KL) (mean KL per response, clipped at 0) over the evaluations of a tune
    (rows of evals.jsonl), each as its change from the first evaluation; Gao et al.'s RL form fitted to each; the
    overoptimisation point (the gold's fitted peak d* = exp(alpha/beta - 1) inside the observed d range while the
    proxy's fit still rises there) with a percentile interval over `resamples` bootstrap resamples of the prompts
    (among the resamples that have such a point) and the share of resamples that have one; the change of each from
    the first to the last evaluation in standard errors of the paired per-prompt difference; a plain verdict."""
    evals = sorted(evals, key=lambda e: e["step"])
    has_gold = bool(evals) and all(e.get("gold") for e in evals)
    steps = [int(e["step"]) for e in evals]
    d = np.sqrt(np.clip([float(e["kl"]["mean"]) for e in evals], 0, None)) if evals else np.zeros(0)
    curve: dict = {"format": FORMAT, "n_evals": len(evals), "steps": steps, "has_gold": has_gold,
                   "points": [], "fit": {"proxy": None, "gold": None}, "point": None,
                   "proxy_rise": None, "gold_rise": None, "gold_trend": None}
    for e in evals:
        first = evals[0]
        row = {"step": e["step"], "kl": e["kl"]["mean"], "sqrt_kl": float(np.sqrt(max(e["kl"]["mean"], 0.0))),
               "distinct_2": e.get("distinct_2"), "top_word": e.get("top_word"),
               "top_word_share": e.get("top_word_share")}
        for name in ("proxy", "gold"):
            if e.get(name):
                pair = _paired((first.get("per_prompt") or {}).get(name) or [first[name]["mean"]],
                               (e.get("per_prompt") or {}).get(name) or [e[name]["mean"]])
                row |= {name: e[name]["mean"], f"{name}_change": pair["change"], f"{name}_change_se": pair["se"]}
        curve["points"].append(row)
    if len(evals) >= 2:
        for name in ("proxy", "gold") if has_gold else ("proxy",):
            pp = [(e.get("per_prompt") or {}).get(name) or [e[name]["mean"]] for e in (evals[0], evals[-1])]
            curve[f"{name}_rise"] = _paired(*pp)
        if has_gold:
            z = curve["gold_rise"]["z"]
            z = z if z is not None else 0.0
            curve["gold_trend"] = "rising" if z >= TREND_Z else "falling" if z <= -TREND_Z else "flat"
    if len(evals) >= MIN_EVALS:
        for name in ("proxy", "gold") if has_gold else ("proxy",):
            values = np.array([e[name]["mean"] for e in evals])
            curve["fit"][name] = fit_rl_form(d, values - values[0])
        if has_gold and _overoptimised(curve["fit"]["gold"], curve["fit"]["proxy"], d):
            peak = curve["fit"]["gold"]["peak"]
            point = {"sqrt_kl": peak, "step": _step_at(steps, d, peak), **(_bootstrap(evals, resamples, seed) or {})}
            # a gold of noise alone has a fitted peak somewhere too: name it only when most resamples agree
            point["confident"] = point.get("share_inside", 1.0) >= CONFIDENT_SHARE
            curve["point"] = point
    curve["verdict"] = _verdict(curve, d)
    return curve


def _verdict(curve: dict, d: np.ndarray) -> str:
    n = curve["n_evals"]
    proxy = curve["proxy_rise"]
    proxy_text = f"the proxy changed by {_z(proxy)} from the first to the last evaluation" if proxy else ""
    if not curve["has_gold"]:
        return "no gold given" + (f"; {proxy_text}" if proxy_text else "")
    if n < MIN_EVALS:
        return (f"too few evaluations to fit the curve ({n}; at least {MIN_EVALS}: evaluate more often, "
                "rlhf.eval_every)")
    point, gold = curve["point"], curve["gold_rise"]
    where = ""
    if point:
        interval = (f" [{point['low']:.3g}, {point['high']:.3g}]" if point.get("low") is not None else "")
        share = (f"in {100 * point['share_inside']:.0f}% of {point['resamples']} prompt resamples"
                 if "share_inside" in point else "")
        where = f"sqrt(KL) = {point['sqrt_kl']:.3g}{interval} (step ~{point['step']})"
        if point["confident"]:
            return (f"the gold peaked at {where} while the proxy kept rising: the policy overoptimised the proxy "
                    f"({proxy_text}, the gold by {_z(gold)}; a peak inside the range {share})")
    fit = curve["fit"]["gold"]
    peak_note = ""
    if point:
        peak_note = f"; the gold's fit peaks at {where}, but only {share}"
    elif fit and fit["peak"] is not None and d.min() < fit["peak"] < d.max():
        peak_note = (f"; the gold's fit peaks at sqrt(KL) = {fit['peak']:.3g} but the proxy's fit was not rising "
                     "there either")
    return (f"no overoptimisation point within this run: the gold was {curve['gold_trend']} ({_z(gold)} "
            f"from the first evaluation) at the last evaluation (sqrt(KL) = {d[-1]:.3g}); {proxy_text}{peak_note}")


def curve_figure(curve: dict, title: str = ""):
    """Proxy and gold (change from the first evaluation, +- se of the paired change) against sqrt(KL), the fitted
    curves and the overoptimisation point with its interval: a matplotlib Figure (no pyplot)."""
    from matplotlib.figure import Figure

    names = ["proxy", "gold"] if curve.get("has_gold") else ["proxy"]
    fig = Figure(figsize=(4.6 * len(names), 3.2), dpi=100, layout="constrained")
    axes = list(fig.subplots(1, len(names), squeeze=False).flat)
    points = curve.get("points") or []
    d = np.array([p["sqrt_kl"] for p in points], dtype=float)
    grid = np.linspace(0, d.max() * 1.05 if len(d) and d.max() > 0 else 1.0, 200)
    for ax, name, color in zip(axes, names, ("C0", "C3")):
        ys = [p.get(f"{name}_change") for p in points]
        errs = [p.get(f"{name}_change_se") or 0.0 for p in points]
        ax.errorbar(d, ys, yerr=errs, fmt="o", color=color, capsize=3, markersize=4, label="evaluations")
        for p, y in zip(points, ys):
            ax.annotate(str(p["step"]), (p["sqrt_kl"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fit = (curve.get("fit") or {}).get(name)
        if fit:
            ax.plot(grid, fitted(fit, grid), color=color, alpha=0.6,
                    label=f"d(\u03b1 \u2212 \u03b2 log d): \u03b1={fit['alpha']:.3g}, \u03b2={fit['beta']:.3g}")
        point = curve.get("point")
        if point:
            confident = point.get("confident", True)
            ax.axvline(point["sqrt_kl"], color="black" if confident else "grey", linestyle="--" if confident else ":",
                       linewidth=1, label="overoptimisation point" if confident else "gold's fitted peak (uncertain)")
            if point.get("low") is not None:
                ax.axvspan(point["low"], point["high"], color="black", alpha=0.08)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("\u221aKL to the base (nats per response)")
        ax.set_ylabel(f"{name} reward: change from step {points[0]['step'] if points else 0}")
        ax.set_title(f"{name}" + (f" ({title})" if title and name == "proxy" else ""), fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def write_gold(out: Path, evals: list[dict], gold_spec: str, reward_spec: str) -> dict:
    """out/gold.json (`gold_curve` of the evaluations, with the two specs) and out/gold.png; returns the curve."""
    curve = {**gold_curve(evals), "gold": gold_spec, "reward": reward_spec}
    write_json(Path(out) / "gold.json", curve)
    if curve["points"]:
        fig = curve_figure(curve)
        with atomic_path(Path(out) / "gold.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return curve
