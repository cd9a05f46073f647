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

import pytest

from conftest import assert_user_error, run_cli
from report_results import make_results
from report_results import section as _section
from rlhf_lens.errors import UserError
from rlhf_lens.report import SECTIONS, write_report
from rlhf_lens.verdict import verdict

SECTION_IDS = [sid for sid, _ in SECTIONS]
HEADLINE_NAMES = ["MMCS (within)", "simulation score", "utility score", "reward alignment"]


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
    # the shift states its test and level; the diff-SAE its centred explained variance and why it stopped
    assert "1 of 32 latents shift (q \u2264 0.05" in md and "test: document-level sign-flip test" in md
    assert "1 \u2212 FVU, about the mean of \u0394) 0.62; stopped: converged" in md
