"""The report's scorer and reward-effect parts (report/scoring.py): each score beside its shuffled-explanation null,
the pooled verdicts, the reward effect and the words it reads, in the features tables, the decomposition's latents
and beside Table 3; and none of it in a run that measured none of it."""

from __future__ import annotations

import copy
import json

from report_results import make_results
from rlhf_lens.interp.features import scoring_summary
from rlhf_lens.report import write_report
from rlhf_lens.report.scoring import reward_effect_cell, scored_columns, scorer_cell, simulation_cell


def _effect(effect: float, claim: str | None, q: float) -> dict:
    return {"vocab_proj": {"tokens": [{"word": "good", "utility": 1.9}]},
            "token_change": {"tokens": [{"word": "great", "utility": 3.1}, {"word": "fun", "utility": 2.3}]},
            "reward_effect": {"effect": effect, "p": q / 2, "q": q, "claim": claim, "level": 0.05, "verdict": "x"}}


def _scored(results: dict) -> dict:
    """`results` with its first-seed features scored by detection and fuzzing and read for their reward effect, and
    utility.json's `scoring` computed from them as the scores stage does."""
    results = copy.deepcopy(results)
    for i, f in enumerate(results["features"]):
        f["simulation_null"] = [0.01 * i]
        f["detection"] = {"auroc": 0.9 - 0.01 * i, "null": [0.5], "n_activating": 5, "n_silent": 5, "failures": 0}
        f["fuzzing"] = {"auroc": 0.8, "null": [0.55], "n_activating": 5, "n_wrong": 5, "failures": 1}
        f.update(_effect(0.4 if i % 3 == 0 else 0.01, "raises" if i % 3 == 0 else None, 0.01 if i % 3 == 0 else 0.8))
    by_model: dict[str, list[dict]] = {}
    for f in results["features"]:
        by_model.setdefault(f["model"], []).append(f)
    cost = {"requests": 240, "cached": 0, "failures": 1, "seconds": 95.0, "model": "hf:smollm2"}
    results["utility"]["scoring"] = scoring_summary(by_model, ["simulation", "detection", "fuzzing"], 0.05, cost)
    return results


def test_cells_show_each_score_beside_its_null():
    feature = {"score": 0.41, "simulation_null": [0.02, 0.04], "detection": {"auroc": 0.83, "null": [0.5, 0.54]},
               **_effect(0.123, "raises", 0.004)}
    assert simulation_cell(feature) == "0.41 (null 0.03)"
    assert scorer_cell(feature, "detection") == "0.83 (null 0.52)"
    assert scorer_cell(feature, "fuzzing") is None  # not scored: no cell
    assert reward_effect_cell(feature) == "+0.123 raises (q 0.004)"
    assert [h for h, _ in scored_columns([feature])] == ["detection AUROC (null)", "reward effect",
                                                          "pushes the output toward"]
    assert scored_columns([{"score": 0.3}]) == []


def test_the_report_shows_scores_their_nulls_and_the_reward_effect(tmp_path):
    results = _scored(make_results())
    (tmp_path / "results.json").write_text(json.dumps(results))
    html_path, md_path = write_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    for text in (md, page):
        assert "detection AUROC (null)" in text and "fuzzing AUROC (null)" in text
        assert "explanations beat shuffled ones" in text  # every model's features beat the 0.5 null
        assert "all models" in text
        assert "pushes the output toward" in text and "TokenChange: great, fun" in text
        assert "240 prompts asked" in text
    # Table 3 keeps the paper's utility score, with the reward effect beside it
    utility_md = md.split("Utility score (Table 3)")[1]
    assert "reward effect" in utility_md.lower() and "raise" in utility_md


def test_a_run_without_scorers_or_reward_effect_shows_no_such_column(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    html_path, md_path = write_report(tmp_path)
    for text in (md_path.read_text(), html_path.read_text()):
        assert "AUROC" not in text and "pushes the output toward" not in text


def test_the_pooled_verdict_needs_a_real_difference():
    """Negative control: explanations scored no better than their nulls are not said to beat them."""
    results = _scored(make_results())
    for f in results["features"]:
        f["detection"]["null"] = [f["detection"]["auroc"]]
    by_model: dict[str, list[dict]] = {}
    for f in results["features"]:
        by_model.setdefault(f["model"], []).append(f)
    scoring = scoring_summary(by_model, ["detection"], 0.05)
    assert all(not s["detection"]["beats_null"] for s in scoring["models"].values())
    assert scoring["reward_effect"]["tuned"]["raises"] == sum(
        1 for f in by_model["tuned"] if f["reward_effect"]["claim"] == "raises")


def test_records_without_a_simulation_score_are_summed_without_one():
    """interp.scorer = ["detection"]: no record has a simulation score; the utility table says "-" for it."""
    from rlhf_lens.interp.utility import format_table, utility_scores

    records = [{k: v for k, v in f.items() if k != "score"} | {"score": None}
               for f in make_results()["features"] if f["model"] == "tuned"]
    result = utility_scores({"tuned": records}, {"great": 3.1, "fun": 2.3})
    assert result["total"]["tuned"]["mean_simulation_score"] is None
    assert format_table(result).splitlines()[-2].split()[-1] == "-"
