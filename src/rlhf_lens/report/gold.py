"""The proxy-and-gold part of the PPO section: the reward the policy was tuned against (the proxy) and the gold
along the tune against sqrt(KL), Gao et al.'s fit, the overoptimisation point and the verdict (results.json's
`ppo.gold`: rlhf/gold.json and the rows of rlhf/evals.jsonl). Written once as parts for the page and summary.md."""

from __future__ import annotations

from .format import _float, _mean_se, _pct
from .plots import _img, _png_uri
from .tables import Figure, Heading, Para, Part, Table


def gold_parts(results: dict) -> list[Part]:
    """The curve's figure, one row per evaluation and the verdict; nothing for a run without evaluations."""
    gold = (results.get("ppo") or {}).get("gold")
    if not gold:
        return []
    curve = gold.get("curve") or {}
    evals = [e for e in (gold.get("evals") or []) if isinstance(e, dict)]
    has_gold = bool(curve.get("has_gold"))
    title = "Proxy and gold along the tune" if has_gold else "Held-out evaluations along the tune"
    parts: list[Part] = [Heading(title)]
    if curve.get("verdict"):
        parts.append(Para(curve["verdict"]))
    if curve.get("points"):
        from ..rlhf.gold import curve_figure

        parts.append(Figure(_img(_png_uri(curve_figure(curve)), "proxy and gold reward against sqrt(KL)")))
    if evals:
        rows = [[e.get("step"), _float(e.get("sqrt_kl")), _mean_se(e.get("proxy")),
                 *([_mean_se(e.get("gold"))] if has_gold else []), _float(e.get("distinct_2")),
                 f"{_pct(e.get('top_word_share'))} ({e.get('top_word') or '-'})"] for e in evals]
        headers = ["step", "\u221aKL", "proxy \u00b1 se", *(["gold \u00b1 se"] if has_gold else []), "distinct-2",
                   "top word"]
        parts.append(Table(headers, rows, numeric={0, 1, 2, 3, 4} if has_gold else {0, 1, 2, 3}))
    spec = f"gold: {curve.get('gold')}; " if has_gold else ""
    parts.append(Para(
        f"{spec}proxy: the run's reward {curve.get('reward') or ''}. Each evaluation completes the same held-out "
        "prompts with the same lengths and random streams; \u221aKL is the root of the mean KL to the base per "
        "response (nats). The curves fit R(d) = d(\u03b1 \u2212 \u03b2 log d) to each reward's change from the first "
        "evaluation (Gao, Schulman & Hilton 2022); the overoptimisation point is the gold's fitted peak inside the "
        "observed range while the proxy's fit still rises, its interval the 2.5-97.5 percentiles over prompt "
        "resamples that have one.", note=True))
    return parts
