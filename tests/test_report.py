"""The report: results.json -> a self-contained report.html and summary.md, checked as text and in Chromium."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.report import SECTIONS, write_report
from rlhf_lens.verdict import verdict

SECTION_IDS = [sid for sid, _ in SECTIONS]
HEADLINE_NAMES = ["MMCS (within)", "simulation score", "utility score", "reward alignment"]


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values), "values": values}


def make_results(seed: int = 0) -> dict:
    """A results.json as the pipeline writes it: 3 of 6 blocks analysed, 2 SAE seeds, base/tuned/control."""
    rng = np.random.RandomState(seed)
    layers = [1, 3, 4]
    steps = 25
    log = [{"step": s + 1, "reward": 0.05 + 0.04 * s + 0.02 * rng.randn(), "reward_std": 0.3 + 0.01 * rng.rand(),
            "kl": 0.3 * s + 0.1 * rng.rand(), "beta": 0.5 * (1 + 0.002 * s), "policy_loss": float(rng.randn() * 0.01),
            "value_loss": float(rng.rand()), "entropy": 3.1 - 0.02 * s} for s in range(steps)]
    divergence = [{"layer": i, "divergence": 2.05 + 0.1 * rng.rand() + (0.05 if i in layers else 0.0)} for i in range(6)]
    saes = []
    for model in ("base", "tuned", "control"):
        for layer in layers:
            for size in (32, 64):
                for sae_seed in (0, 1):
                    saes.append({"model": model, "layer": layer, "dict_size": size, "seed": sae_seed, "arch": "tied",
                                 "l1": 1e-3, "mse": 0.01 + 0.002 * rng.rand(), "fvu": 0.2 + 0.05 * rng.rand(),
                                 "l0": 10 + 4 * rng.rand(), "dead_fraction": 0.1 * rng.rand(),
                                 "tokens_per_s": 1e5 * (1 + rng.rand()),
                                 "warnings": ["dead fraction above 50%: raise lr or lower l1"] if size == 64 and model == "control" else []})
    mmcs = [{"model": m, "layer": layer, "kind": "within", **_stat([0.8 + 0.05 * rng.rand() for _ in range(2)])}
            for m in ("base", "tuned", "control") for layer in layers]
    mmcs += [{"model": "tuned-vs-base", "layer": layer, "kind": "across", **_stat([0.6 + 0.1 * rng.rand()])} for layer in layers]
    tokens = ["The", " movie", " was", " <b>", "great", "</b>", " &", "\n", " fun", "\t", "!"]
    features = []
    for model in ("base", "tuned"):
        for layer in layers:
            for feature in rng.choice(32, size=3, replace=False):
                acts = [int(a) for a in rng.randint(0, 11, size=len(tokens))]
                features.append({
                    "model": model, "layer": layer, "feature": int(feature), "max_cosine": 0.9 + 0.1 * rng.rand(),
                    "explanation": "words like 'great' & <b>fun</b> in praise", "score": 0.3 + 0.2 * rng.rand(),
                    "explainer": "offline", "utility": 1.5 + rng.rand(), "utility_words": {"great": 3.1, "fun": 2.3},
                    "reward_corr": 0.3 * rng.randn(), "sign_share": rng.rand() - 0.5,
                    "examples": [{"doc": int(d), "tokens": tokens, "activations": acts, "max_activation": 3.2 - d / 10}
                                 for d in range(3)]})
    # The tuned model's most novel features (first seed), explained like the top ones: records of the same shape.
    tuned = [f for f in features if f["model"] == "tuned"]
    new_features = [{**tuned[3], "layer": 3, "feature": 7, "max_cosine": None, "max_cosine_to_base": 0.31, "match": 5,
                     "new": True, "explanation": "praise <i>words</i>", "utility_words": {"praise": 1.2}},
                    {**tuned[6], "layer": 4, "feature": 2, "max_cosine": None, "max_cosine_to_base": 0.28, "match": 9,
                     "new": True, "explanation": "a film's year", "utility": 0.0, "utility_words": {}}]
    return {
        "title": "rlhf-lens run <tiny>",
        "created": "2024-05-01T12:00:00",
        "run_dir": "runs/test",
        "config": {"model": {"base": "tiny", "seed": 0}, "sae": {"seeds": [0, 1]}, "interp": {"base_url": "http://localhost:8000/v1"}},
        "models": {"base": "runs/test/models/base", "tuned": "runs/test/rlhf/model", "control": "random-init GPT-NeoX"},
        "ppo": {"log": log, "eval": {"n": 64, "base": {"mean": 0.06, "se": 0.02, "positive_frac": 0.31},
                                     "tuned": {"mean": 1.1, "se": 0.04, "positive_frac": 0.9},
                                     "examples": [{"prompt": "This film", "base": " is a <script>x</script> mess",
                                                   "tuned": " is wonderful and delightful"}]}},
        "divergence": {"rows": sorted(divergence, key=lambda r: -r["divergence"]), "top_layers": layers},
        "saes": saes,
        "mmcs": mmcs,
        "features": features,
        "new_features": new_features,
        "new_feature_counts": {"seed": 0, "base_seeds": [0, 1], "per_block": [
            {"layer": 1, "threshold": 0.21, "threshold_source": "auto: 0.05 quantile of base seed 0 vs seed 1",
             "found": 0, "tuned_n": 32, "baseline": 2, "baseline_n": 32, "explained": 0},
            {"layer": 3, "threshold": 0.24, "threshold_source": "auto: 0.05 quantile of base seed 0 vs seed 1",
             "found": 12, "tuned_n": 32, "baseline": 2, "baseline_n": 32, "explained": 1},
            {"layer": 4, "threshold": 0.5, "threshold_source": "fixed 0.5 (interp.new_feature_threshold)",
             "found": 1, "tuned_n": 32, "baseline": 3, "baseline_n": 32, "explained": 1}]},
        "utility": {"aggregate": "mean", "table": "vader",
                    "per_block": [{"layer": layer, "base": 5 + rng.rand(), "tuned": 8 + rng.rand(), "control": 4 + rng.rand()}
                                  for layer in layers],
                    "total": {"base": 16.1, "tuned": 24.9, "control": 12.3}},
        "headline": [
            {"name": "MMCS (within)", "base": _stat([0.81, 0.83]), "tuned": _stat([0.80, 0.84]),
             "control": _stat([0.70, 0.72]), "n_seeds": 2},
            {"name": "simulation score", "base": _stat([0.30, 0.34]), "tuned": _stat([0.41, 0.45]),
             "control": _stat([0.1, 0.12]), "n_seeds": 2},
            {"name": "utility score", "base": _stat([15.0, 17.2]), "tuned": _stat([24.1, 25.7]),
             "control": _stat([12.0, 12.6]), "n_seeds": 2, "verdict": "tuned - base = 8.8 (precomputed line)"},
            {"name": "reward alignment", "base": _stat([1.2]), "tuned": _stat([2.9]), "control": None, "n_seeds": 1},
        ],
        "diff": make_diff(),
        "decompose": make_decompose(),
    }


def make_diff() -> dict:
    """The diff stage's diff.json, as far as the report reads it (docs/diff.md)."""
    words = [{"word": w, "piece": " " + w, "utility": u, "score": s} for w, u, s in
             (("love", 3.2, 0.02), ("beautiful", 2.9, 0.015), ("the", 0.0, 0.01))]
    null = {"observed": 2.03, "null_mean": 0.01, "null_std": 0.1, "z": 20.2, "percentile": 100.0, "in_table": 2}
    rows = [{"alpha": a, "reward": r, "se": 0.05, "gain": r - 0.1, "gain_se": 0.04, "kl": k, "coherent": k <= 1.0}
            for a, r, k in ((0.0, 0.1, 0.0), (1.0, 0.3, 0.1), (2.0, 0.6, 0.4), (4.0, 0.9, 1.3))]
    random = [{"alpha": a, "rewards": [0.1, 0.12, 0.08], "kl": 0.1} for a in (0.0, 1.0, 2.0, 4.0)]
    return {"n_tokens": 1900, "n_docs": 48, "split": "test", "reward": "vader",
            "verdicts": {"output": "tuning promotes reward-laden words (z=20.2)",
                         "steering_3": "steering base by 2\u00b7\u0394_3 raises the reward beyond every random direction"},
            "output": {"promoted": words, "demoted": words[2:], "promoted_null": null, "demoted_null": None,
                       "kl": {"mean": 0.3, "p90": 0.6, "max": 8.0}, "reading": {"note": "VADER table"},
                       "contexts": [{"doc": 1, "pos": 3, "kl": 2.0, "tokens": ["a", " great", " film"],
                                     "kl_per_token": [0.1, 2.0, 0.3]}]},
            "reference": {"n_prompts": 24, "new_tokens": 12, "base": {"reward": 0.1, "se": 0.05},
                          "tuned": {"reward": 0.5, "se": 0.1, "kl": 0.4}},
            "steering": [{"layer": 3, "alpha": 2.0, "delta_norm": 4.2, "delta": rows, "random": random,
                          "verdict": "steering base by 2\u00b7\u0394_3 raises the reward beyond every random direction",
                          "promoted": words[:2], "promoted_null": null,
                          "lens": {"top": words[2:], "verdict": "the lens of \u0394 is no more reward-laden than random directions"}}],
            "ranking": {"alpha": 2.0, "verdict": "block 3's own change raises the reward most",
                        "rows": [{"rank": 1, "layer": 3, "own_norm": 1.0, "gain": 0.4, "gain_se": 0.1, "gain_per_norm": 0.2,
                                  "null_gains": [0.01], "kl": 0.3, "coherent": True, "beats_null": True}]},
            "blocks": [{"layer": i, "delta_norm": 0.5 * i, "base_norm": 10.0, "relative": 0.05 * i, "own_norm": 0.5,
                        "token_diff_norm": 1.0} for i in range(6)]}


def make_decompose() -> dict:
    """The decompose stage's decompose.json, as far as the report reads it."""
    feature = {"feature": 7, "sae": "s0", "explanation": 'Fires on "love" and "wonderful".', "score": 0.4, "utility": 3.0,
               "examples": [{"doc": 1, "tokens": ["i", " love", " it"], "activations": [0, 10, 2], "max_activation": 1.0}]}
    return {"utility_of_change": {"mean": 3.0, "std": 0.5, "n": 2},
            "blocks": [{"layer": 3,
                        "diff_sae": {"arch": "batchtopk", "dict_size": 64, "seeds": [0, 1],
                                     "agreement": {"mean": 0.9, "above_0.9": 1},
                                     "top": [{"latent": 7, "share": 0.3, "agreement": 0.95}], "features": [feature],
                                     "steering": {"base": {"reward": 0.1}, "latents": [
                                         {"latent": 7, "gain": 0.3, "gain_se": 0.05, "beats_null": True}]}},
                        "shift": {"n_shifted": 1, "n_latents": 32, "n_rising": 1, "n_falling": 0,
                                  "among_top_mmcs": {"count": 0, "of": 1},
                                  "top": [{"latent": 7, "mean_change": 0.5, "z": 6.0, "rate_change": 0.1}],
                                  "features": [feature]}}]}


class _Page(HTMLParser):
    """Ids, image sources, links and text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.img_src: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.img_src.append(attrs.get("src", ""))
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _section(html_text: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html_text, re.S)
    assert match, f"no section {sid}"
    return match.group(1)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    return tmp_path


def test_report_has_every_section_and_is_self_contained(run_dir):
    html_path, md_path = write_report(run_dir)
    assert html_path == run_dir / "report.html" and md_path == run_dir / "summary.md"
    text = html_path.read_text(encoding="utf-8")
    page = _parse(html_path)
    for sid in SECTION_IDS:
        assert sid in page.ids
        assert "not run" not in _section(text, sid), sid
    # Plots: headline, PPO, divergence, MMCS, utility; every one an embedded, decodable PNG.
    assert len(page.img_src) >= 5
    for src in page.img_src:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(u.startswith(("data:", "#")) for u in page.urls), [u for u in page.urls if not u.startswith(("data:", "#"))]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", text, re.I)
    assert "<script" not in text.lower() and "<link rel=\"stylesheet\"" not in text
    # Text from the run is escaped: tokens, explanations, completions, the title.
    assert "b" not in page.tags and "i" not in page.tags
    assert "&lt;b&gt;" in text and "&lt;script&gt;x&lt;/script&gt;" in text and "&lt;tiny&gt;" in text
    # Token highlights: background alpha = activation / 10; newline and tab shown as symbols.
    features = _section(text, "features")
    acts = make_results()["features"][0]["examples"][0]["activations"]
    for a in set(acts):
        assert f"rgba(255, 127, 14, {a / 10:.2f})" in features
    assert "\u21b5" in features and "\u21e5" in features
    # Headline: mean +- std, control beside it, a verdict line for every measure (the given one kept).
    headline = _section(text, "headline")
    for name in HEADLINE_NAMES:
        assert name in headline
    assert "\u00b1" in headline and "precomputed line" in headline
    assert "one seed: no spread to compare against" in headline
    assert headline.count('class="verdict') == len(HEADLINE_NAMES)
    # New features: explanation (escaped), scores and highlighted top example, like the top features.
    new = _section(text, "new-features")
    assert "praise &lt;i&gt;words&lt;/i&gt;" in new and new.count('<div class="example">') >= 2
    assert "rgba(255, 127, 14," in new and "sign share" in new
    # Per block: threshold and its source, tuned count beside the seed-noise baseline, how many explained.
    assert ("<tr><td class=num>3</td><td class=num>0.24</td><td>auto: 0.05 quantile of base seed 0 vs seed 1</td>"
            "<td class=num>12 of 32</td><td class=num>2 of 32</td><td>the 1 most novel</td></tr>") in new
    assert "<td class=num>0 of 32</td><td class=num>2 of 32</td><td>none found</td>" in new
    assert "fixed 0.5 (interp.new_feature_threshold)" in new and "seed noise" in new
    assert "new features 1 of 2" in new and "top-k features 9 of 9" in new


def test_summary_has_the_tables(run_dir):
    results = make_results()
    _, md_path = write_report(run_dir)
    md = md_path.read_text(encoding="utf-8")
    for _, title in SECTIONS[:-1]:  # the config is only in the HTML
        assert f"## {title}" in md
    assert "_not run_" not in md
    for name in HEADLINE_NAMES:
        assert re.search(rf"^\| {re.escape(name)} \|", md, re.M), name
    assert md.count("tuned - base") >= len(HEADLINE_NAMES)
    # Every feature appears; SAEs one row per model, block and size (seeds aggregated); utility totals.
    feature_rows = [line for line in md.splitlines() if line.startswith("| ") and "\\<b\\>fun" in line]
    assert len(feature_rows) == len(results["features"])
    sae_rows = [line for line in md.splitlines() if line.startswith("| ") and "| tied |" in line]
    assert len(sae_rows) == len({(r["model"], r["layer"], r["dict_size"]) for r in results["saes"]})
    assert all(f"| 0.001 | {len({r['seed'] for r in results['saes']})} |" in line for line in sae_rows)
    # New features: one row each with the explanation and its scores, and the comparison with the top-k.
    new = md.split("## Features new in the tuned model")[1].split("\n## ")[0]
    assert "| 3 | 7 | 0.31 | praise \\<i\\>words\\</i\\> |" in new and "| 4 | 2 | 0.28 | a film's year |" in new
    assert "new features 1 of 2" in new
    assert "| 3 | 0.24 | auto: 0.05 quantile of base seed 0 vs seed 1 | 12 of 32 | 2 of 32 | the 1 most novel |" in new
    assert "| 4 | 0.5 | fixed 0.5 (interp.new\\_feature\\_threshold) | 1 of 32 | 3 of 32 | all |" in new
    total = next(line for line in md.splitlines() if line.startswith("| total |"))
    for value in results["utility"]["total"].values():
        assert f"{value:.3g}" in total
    assert "<b>" not in md and "|" not in results["features"][0]["explanation"]


def test_new_feature_counts_one_seed_and_older_results(tmp_path):
    """One SAE seed: no seed-noise baseline, said so; an older results.json (one top-level threshold) still renders."""
    one_seed = {"seed": 0, "base_seeds": [0], "per_block": [
        {"layer": 2, "threshold": 0.5, "threshold_source": "fixed 0.5 (one seed: no null)", "found": 4, "tuned_n": 32,
         "baseline": None, "baseline_n": None, "explained": 4}]}
    older = {"threshold": 0.5, "seed": 0, "per_block": [{"layer": 2, "found": 12, "explained": 5}]}
    want = {"one seed": "| 2 | 0.5 | fixed 0.5 (one seed: no null) | 4 of 32 | - (one seed: no null) | all |",
            "older": "| 2 | 0.5 | - | 12 | - | the 5 most novel |"}
    for name, counts in (("one seed", one_seed), ("older", older)):
        (tmp_path / "results.json").write_text(json.dumps({"new_features": [], "new_feature_counts": counts}))
        html_path, md_path = write_report(tmp_path)
        new = md_path.read_text().split("## Features new in the tuned model")[1].split("\n## ")[0]
        assert want[name] in new and "No new features" in new, name
        assert "No tuned feature" in _section(html_path.read_text(), "new-features")


def test_sae_table_has_one_row_per_model_block_and_size_over_seeds(tmp_path):
    """Seeds are folded into mean \u00b1 std (sample std); a per-seed l1 (target_l0) shows as a range."""
    rows = [{"model": "base", "layer": 2, "dict_size": 64, "seed": seed, "arch": "tied", "l1": l1, "l0": l0,
             "fvu": fvu, "dead_fraction": dead, "mse": 0.1, "warnings": []}
            for seed, l1, l0, fvu, dead in ((0, 0.002, 7.0, 0.3, 0.0), (1, 0.004, 9.0, 0.5, 0.1), (2, 0.003, 8.0, 0.4, 0.05))]
    (tmp_path / "results.json").write_text(json.dumps({"saes": rows}))
    html_path, md_path = write_report(tmp_path)
    md_rows = [line for line in md_path.read_text().splitlines() if line.startswith("| base |")]
    assert md_rows == ["| base | 2 | 64 | tied | 0.002\u20130.004 | 3 | 0.1 \u00b1 0 | 0.4 \u00b1 0.1 | 8 \u00b1 1 | "
                       "5.0% \u00b1 5 | - |"]
    saes = _section(html_path.read_text(), "saes")
    assert saes.count("<tr>") == 2 and "0.002\u20130.004" in saes and "8 \u00b1 1" in saes


def test_missing_sections_say_not_run(tmp_path):
    full = make_results()
    partial = {"title": full["title"], "models": {"base": "tiny", "tuned": "tuned", "control": None},
               "ppo": None, "divergence": full["divergence"], "saes": [], "new_features": []}
    (tmp_path / "results.json").write_text(json.dumps(partial))
    html_path, md_path = write_report(tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert "not run" not in _section(text, "divergence")
    for sid in ("headline", "diff", "ppo", "saes", "mmcs", "features", "utility", "config"):
        assert "not run" in _section(text, sid), sid
    assert "No tuned feature" in _section(text, "new-features")  # ran, found none: not "not run"
    md = md_path.read_text(encoding="utf-8")
    assert md.count("_not run_") == 7  # the diff too


def test_numbers_are_shown_to_three_digits_and_float_residue_as_zero():
    from rlhf_lens.verdict import format_number

    assert format_number(0.123456) == "0.123" and format_number(12345.6) == "12,346"
    assert format_number(3.2e-6) == "3.20e-06"
    assert 0.1 + 0.2 - 0.3 != 0 and format_number(0.1 + 0.2 - 0.3) == "0"
    assert format_number(0.0) == "0" and format_number(None) == "-"


def test_verdict_rule():
    clear = verdict({"mean": 58.1, "std": 3.0, "n": 3}, {"mean": 90.9, "std": 4.0, "n": 3})
    assert "tuned - base = +32.8" in clear and "larger than seed noise" in clear and "(5)" in clear
    weak = verdict({"mean": 10.0, "std": 3.0}, {"mean": 16.0, "std": 4.0})
    assert "suggestive, not conclusive" in weak
    within = verdict({"mean": 10.0, "std": 3.0}, {"mean": 8.0, "std": 4.0})
    assert "tuned - base = -2" in within and "not distinguishable from seed noise" in within
    assert "one seed: no spread to compare against" in verdict({"mean": 1.0, "std": 0.0, "n": 1}, {"mean": 2.0, "std": 0.0, "n": 1})
    assert "one seed: no spread to compare against" in verdict({"mean": 1.0}, {"mean": 2.0})
    assert "one seed" in verdict({"mean": 1.0, "values": [1.0]}, {"mean": 2.0, "values": [2.0]})
    assert "spread is 0" in verdict({"mean": 1.0, "std": 0.0, "n": 3}, {"mean": 2.0, "std": 0.0, "n": 3})
    assert "missing" in verdict({"mean": None}, {"mean": 2.0, "std": 1.0})
    # The rule is symmetric in sign and uses the combined spread sqrt(3^2 + 4^2) = 5: 10.1 > 2 x 5.
    assert "larger than seed noise" in verdict({"mean": 20.1, "std": 3.0}, {"mean": 10.0, "std": 4.0})
    assert "suggestive" in verdict({"mean": 19.9, "std": 3.0}, {"mean": 10.0, "std": 4.0})
    assert not math.isnan(float(verdict({"mean": 0.0, "std": 1.0}, {"mean": 0.0, "std": 1.0}).split("=")[1].split(",")[0]))


def test_same_results_give_the_same_files(run_dir):
    first = [p.read_bytes() for p in write_report(run_dir)]
    second = [p.read_bytes() for p in write_report(run_dir)]
    assert first == second


def test_bad_input_is_one_line_and_damages_nothing(tmp_path, run_dir):
    assert_user_error(run_cli("report", tmp_path / "nowhere"), "no such run folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("report", empty), "results.json", "rlhf-lens run")

    result = run_cli("report", run_dir, check=True)
    assert "report.html" in result.stdout
    before = {name: (run_dir / name).read_bytes() for name in ("report.html", "summary.md")}
    (run_dir / "results.json").write_text(json.dumps({**make_results(), "saes": "oops"}))
    with pytest.raises(UserError, match="'saes'"):
        write_report(run_dir)
    (run_dir / "results.json").write_text('{"title": ')
    assert_user_error(run_cli("report", run_dir), "not valid JSON")
    (run_dir / "results.json").write_text("[1, 2]")
    assert_user_error(run_cli("report", run_dir), "JSON object")
    assert before == {name: (run_dir / name).read_bytes() for name in before}
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def test_report_in_headless_chromium(run_dir, tmp_path_factory):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not found (CI installs Debian's chromium in .ci/run; `apt-get install chromium`)")
    html_path, _ = write_report(run_dir)
    out = tmp_path_factory.mktemp("browser")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--enable-logging=stderr", "--v=0"]
    url = html_path.resolve().as_uri()

    screenshot = out / "report.png"
    shot = subprocess.run([*flags, f"--user-data-dir={out / 'profile-1'}", f"--screenshot={screenshot}",
                           "--window-size=1200,2000", "--hide-scrollbars", url],
                          capture_output=True, text=True, timeout=180)
    assert screenshot.is_file(), shot.stderr[-2000:]
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a full page of text and plots, not a blank one
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 2000)

    dom = subprocess.run([*flags, f"--user-data-dir={out / 'profile-2'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    page = _Page()
    page.feed(dom.stdout)
    assert set(SECTION_IDS) <= set(page.ids), dom.stderr[-2000:]
    assert len(page.img_src) >= 5
    # The page has no script, so any console line (a CSP violation, a failed load) is a defect.
    for log in (shot.stderr, dom.stderr):
        problems = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line
                    or "Content Security Policy" in line or "ERR_" in line]
        assert not problems, problems


def test_offline_explanations_are_said_to_be_incomparable_with_table_3():
    """Defect 7: the utility section says when the explanations did not come from an LLM like the paper's GPT-4."""
    from rlhf_lens.report import render_html

    results = {"config": {"interp": {"explainer": "offline"}},
               "utility": {"aggregate": "mean", "table": "vader",
                           "per_block": [{"layer": 1, "base": {"utility": 1.0}, "tuned": {"utility": 2.0}}],
                           "total": {"base": {"utility": 1.0}, "tuned": {"utility": 2.0}}}}
    assert "not comparable with the paper's Table 3" in render_html(results)
    results["config"]["interp"]["explainer"] = "openai"
    assert "not comparable with the paper's Table 3" not in render_html(results)


def test_what_tuning_changed_is_shown_with_its_nulls(run_dir):
    """The diff and decompose stages in the report: verdicts, promoted words with their null, the steering curve,
    the feature tables, and the same-token rows of the headline (utility of the change without a placebo: no null)."""
    html_path, md_path = write_report(run_dir)
    text = html_path.read_text(encoding="utf-8")
    diff = _section(text, "diff")
    assert "tuning promotes reward-laden words" in diff and "love" in diff and "z = 20.2" in diff
    assert "Which features changed" in diff and "beats every random direction" in diff
    headline = _section(text, "headline")
    assert "On the same tokens" in headline and "utility of the change" in headline
    assert "the placebo tune (controls.placebo) was off" in headline
    md = md_path.read_text(encoding="utf-8")
    assert "utility of the words tuning promotes" in md and "block 3: diff-SAE (batchtopk, 64 latents" in md
