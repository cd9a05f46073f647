"""How well the explanations score, and what each feature does to the output read through the reward: the cells the
features tables add (detection and fuzzing AUROC beside their shuffled-explanation null, the reward effect) and the
pooled summary (results.json `scoring`, the scores stage), written once for report.html and summary.md."""

from __future__ import annotations

from typing import Any

from .format import _float, _num, _signed

SCORER_NAMES = {"simulation": "simulation (Pearson r)", "detection": "detection (AUROC)", "fuzzing": "fuzzing (AUROC)"}


def _null_mean(values: Any) -> float | None:
    got = [_float(v) for v in (values or []) if _float(v) is not None]
    return sum(got) / len(got) if got else None


def scorer_cell(feature: dict, scorer: str) -> str | None:
    """`0.83 (null 0.52)`: a feature's AUROC beside the mean AUROC of the same examples under other features'
    explanations; None when the scorer did not score it."""
    score = feature.get(scorer)
    if not isinstance(score, dict):
        return None
    auroc, null = _float(score.get("auroc")), _null_mean(score.get("null"))
    if auroc is None:
        return "-"
    return f"{_num(auroc)}" + (f" (null {_num(null)})" if null is not None else "")


def simulation_cell(feature: dict) -> str | None:
    """The simulation score beside its shuffled-explanation null, when the run scored one."""
    score = _float(feature.get("score"))
    null = _null_mean(feature.get("simulation_null"))
    if score is None:
        return None
    return f"{_num(score)}" + (f" (null {_num(null)})" if null is not None else "")


def reward_effect_cell(feature: dict) -> str | None:
    """`+0.12 raises (q 0.01)`: the mean utility of the tokens steering by the feature's decoder row promotes, minus
    that of frequency-matched random token sets, with its claim; None when it was not measured."""
    effect = feature.get("reward_effect")
    if not isinstance(effect, dict):
        return None
    value = _float(effect.get("effect"))
    if value is None:
        return "-"
    claim = effect.get("claim")
    said = {"raises": "raises", "lowers": "lowers"}.get(str(claim), "none")
    q = _float(effect.get("q"))
    return f"{_signed(value)} {said}" + (f" (q {_num(q)})" if q is not None else "")


def promoted_words(feature: dict, n: int = 5) -> str | None:
    """TokenChange's first promoted words (VocabProj's when TokenChange did not run), as a short list."""
    for key in ("token_change", "vocab_proj"):
        part = feature.get(key)
        if isinstance(part, dict) and part.get("tokens"):
            words = [str(t.get("word", t.get("piece", "?"))) if isinstance(t, dict) else str(t)
                     for t in part["tokens"][:n]]
            return ("TokenChange: " if key == "token_change" else "VocabProj: ") + ", ".join(words)
    return None


def scored_columns(features: list[dict]) -> list[tuple[str, Any]]:
    """(header, cell function) of the columns these features have something for: detection, fuzzing, reward
    effect and the words it reads (a run without the scorers or the reward effect shows none of them)."""
    columns: list[tuple[str, Any]] = []
    for scorer in ("detection", "fuzzing"):
        if any(isinstance(f.get(scorer), dict) for f in features):
            columns.append((f"{scorer} AUROC (null)", lambda f, s=scorer: scorer_cell(f, s)))
    if any(isinstance(f.get("reward_effect"), dict) for f in features):
        columns.append(("reward effect", reward_effect_cell))
        columns.append(("pushes the output toward", promoted_words))
    return columns


def summary_rows(scoring: dict) -> list[list[Any]]:
    """Per model and scorer: features scored, mean score, mean null, the paired test's p and its verdict."""
    rows = []
    for model, by_scorer in (scoring.get("models") or {}).items():
        for scorer, s in by_scorer.items():
            if not isinstance(s, dict):
                continue
            rows.append([model, SCORER_NAMES.get(scorer, scorer), s.get("n_features"), _float(s.get("mean")),
                         _float(s.get("null_mean")), _float(s.get("p_value")), s.get("verdict") or "-"])
    return rows


SUMMARY_HEADERS = ["model", "scorer", "features", "mean", "null mean", "p", "verdict"]


def effect_rows(scoring: dict) -> list[list[Any]]:
    """Per model: features whose reward effect was measured, how many raise / lower the reward's words beyond
    frequency-matched random token sets (Benjamini-Hochberg over the model's features), and the mean effect."""
    rows = []
    for model, e in (scoring.get("reward_effect") or {}).items():
        rows.append([model, e.get("n"), e.get("raises"), e.get("lowers"), _float(e.get("mean"))])
    return rows


EFFECT_HEADERS = ["model", "features", "raise (q \u2264 level)", "lower (q \u2264 level)", "mean effect"]


def cost_text(scoring: dict) -> str | None:
    """What the scorer model cost: requests, answers from the cache, failures, seconds."""
    cost = scoring.get("cost") or {}
    if not cost:
        return None
    return (f"Scorer model {cost.get('model', '?')}: {_num(cost.get('requests'))} prompts asked, "
            f"{_num(cost.get('cached'))} answered from the cache, {_num(cost.get('failures'))} without a usable "
            f"yes/no answer, {_num(_float(cost.get('seconds')))} s.")
