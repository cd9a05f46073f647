"""Detection and fuzzing scores of explanations, each against the shuffled-explanation null, and the pooled test.

- `auroc`: the Mann-Whitney AUROC of the scorer's P(yes) on positives against negatives (ties count 1/2).
- The null: every feature's examples are also scored with `null_explanations` explanations of OTHER features of
  the same call whose text differs from its own (seeded), so a score means something only against what any
  explanation of this corpus would get on these texts (a vague explanation, a scorer that says yes to anything).
- `score_explanations`: one `p_yes` call per scorer for every feature x (real + null explanations) x case, so the
  back-end batches (and caches) them; progress counts prompts, showing the back-end's requests and seconds.
- `simulation_null`: the explainer's simulator on the same scoring records with the shuffled explanations.
- `scorer_summary`: over any list of feature records, real minus mean null per feature, tested by sign flips
  (nulls.paired_p_value, one-sided), with a plain verdict.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ..nulls import mean_se, paired_p_value
from ..progress import progress_bar
from .detection import detection_cases, detection_messages
from .examples import FeatureExamples
from .fuzzing import fuzzing_cases, fuzzing_messages
from .scoring import simulation_score

LEVEL = 0.05
"""One-sided level of the pooled test (explanations beat shuffled ones)."""
BEATS = "explanations beat shuffled ones"
NO_BETTER = "no better than another feature's explanation"
TOO_FEW = "too few features to tell"

# scorer -> (cases(item, seed) -> (texts, is_positive, counts), messages(explanation, text) -> chat prompt)
SCORERS: dict[str, tuple[Callable, Callable]] = {
    "detection": (detection_cases, detection_messages),
    "fuzzing": (fuzzing_cases, fuzzing_messages),
}


class YesNoModel(Protocol):
    """What the scorers need of a scorer model (answers.YesNo)."""

    model_id: str
    requests: int
    seconds: float

    def p_yes(self, prompts: list[list[dict]], advance: Callable[[int], None] | None = None
              ) -> list[float | None]: ...


def auroc(positive: Sequence[float | None], negative: Sequence[float | None]) -> float | None:
    """P(a positive's value > a negative's) + P(tie) / 2 (Mann-Whitney U / (n+ n-)); None values are dropped,
    and the result is None when either class is then empty."""
    from scipy.stats import rankdata

    pos = np.asarray([v for v in positive if v is not None], dtype=np.float64)
    neg = np.asarray([v for v in negative if v is not None], dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: a tie counts 1/2
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def choose_null_explanations(explanations: Sequence[str], count: int, seed: int = 0,
                             keys: Sequence[tuple[str, int]] | None = None,
                             eligible: Sequence[bool] | None = None) -> list[list[int]]:
    """Per feature, `count` indices of other features (among the `eligible` ones, default all) whose explanation
    text differs from its own (fewer when there are not enough), drawn without replacement by a generator seeded
    by `seed` and the feature's key (sae, feature) (default: its position), so a feature's null does not move
    when features outside the eligible ones ride along in the same call."""
    keys = list(keys) if keys is not None else [("", i) for i in range(len(explanations))]
    eligible = list(eligible) if eligible is not None else [True] * len(explanations)
    out = []
    for i, own in enumerate(explanations):
        others = [k for k, text in enumerate(explanations) if k != i and eligible[k] and text != own]
        if not others or count <= 0:
            out.append([])
            continue
        sae, feature = keys[i]
        rng = np.random.default_rng([seed, 0x5C0, zlib.crc32(str(sae).encode()), int(feature)])
        picked = rng.choice(len(others), size=min(count, len(others)), replace=False)
        out.append([others[int(k)] for k in picked])
    return out


def score_explanations(scorers: Sequence[str], items: Sequence[FeatureExamples], explanations: Sequence[str],
                       nulls: Sequence[Sequence[int]], labels: Sequence[dict], yes_no: YesNoModel,
                       seed: int = 0) -> dict[str, list[dict]]:
    """scorer -> one result per item (the record's "detection" / "fuzzing" dict, docs/interp.md): its explanation
    `explanations[i]` scored on its own cases, and so is each null explanation `explanations[k]`, k in `nulls[i]`
    (`labels[k]` recorded). Failed answers (None) are dropped from the AUROC and counted, never fatal."""
    out: dict[str, list[dict]] = {}
    with progress_bar() as bar:
        for scorer in scorers:
            cases, messages = SCORERS[scorer]
            prompts: list[list[dict]] = []
            plans = []  # per item: (cases, counts, texts per explanation)
            for i, item in enumerate(items):
                texts, positive, counts = cases(item, seed)
                shown = [i, *nulls[i]]
                for k in shown:
                    prompts.extend(messages(explanations[k], text) for text in texts)
                plans.append((positive, counts, shown))
            description = f"{scorer} ({getattr(yes_no, 'model_id', 'scorer')})"
            task = bar.add_task(description, total=len(prompts))

            def advance(n: int, task=task, description=description) -> None:
                bar.update(task, advance=n, description=f"{description}: {yes_no.requests} requests, "
                                                        f"{yes_no.seconds:.0f} s")

            answers = yes_no.p_yes(prompts, advance) if prompts else []
            bar.update(task, completed=len(prompts))
            results, at = [], 0
            for positive, counts, shown in plans:
                aurocs, failures = [], 0
                for _ in shown:
                    got = answers[at:at + len(positive)]
                    at += len(positive)
                    failures += sum(p is None for p in got)
                    aurocs.append(auroc([p for p, y in zip(got, positive) if y],
                                        [p for p, y in zip(got, positive) if not y]))
                results.append({"auroc": aurocs[0], "null": aurocs[1:],
                                "null_explanations": [labels[k] for k in shown[1:]], **counts,
                                "failures": failures})
            out[scorer] = results
    return out


def simulation_null(explainer, items: Sequence[FeatureExamples], explanations: Sequence[str],
                    nulls: Sequence[Sequence[int]]) -> list[list[float]]:
    """Per item, the simulation score (scoring.simulation_score) of its scoring records under each null
    explanation; a failed simulation predicts a constant 0, as for the real explanation."""
    jobs = [(explanations[k], [r.tokens for r in item.scoring()]) for item, ks in zip(items, nulls) for k in ks]
    simulated = explainer.simulate_many(jobs) if jobs else []
    out, at = [], 0
    for item, ks in zip(items, nulls):
        true = [r.values for r in item.scoring()]
        scores = []
        for sims in simulated[at:at + len(ks)]:
            sims = [[0.0] * len(t) if s is None else s for s, t in zip(sims, true)]
            scores.append(simulation_score(sims, true))
        at += len(ks)
        out.append(scores)
    return out


def scorer_summary(records: Sequence[dict], scorer: str, level: float = LEVEL) -> dict:
    """Pooled over feature records: features scored with a real score and at least one null, the mean score
    (AUROC, or simulation score), the mean of the null, per feature real minus mean null (mean, se), the
    one-sided sign-flip p-value of that difference, and the verdict (p < level: explanations beat shuffled ones;
    with fewer than log2(1 / level) features (5 at 0.05) no sign pattern can reach the level: too few to tell)."""
    real, null = [], []
    for record in records:
        if scorer == "simulation":
            score, draws = record.get("score"), record.get("simulation_null") or []
        else:
            entry = record.get(scorer) or {}
            score, draws = entry.get("auroc"), entry.get("null") or []
        draws = [d for d in draws if d is not None]
        if score is not None and draws:
            real.append(float(score))
            null.append(float(np.mean(draws)))
    if not real:
        return {"scorer": scorer, "n_features": 0, "mean": None, "null_mean": None, "difference": None,
                "p_value": None, "beats_null": False, "verdict": "not scored against a null"}
    difference = np.asarray(real) - np.asarray(null)
    p = paired_p_value(difference, side="greater")
    verdict = BEATS if p < level else (TOO_FEW if 2.0 ** -len(real) >= level else NO_BETTER)
    return {"scorer": scorer, "n_features": len(real), "mean": float(np.mean(real)), "null_mean": float(np.mean(null)),
            "difference": mean_se(difference), "p_value": p, "beats_null": bool(p < level), "verdict": verdict}
