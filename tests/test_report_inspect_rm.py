"""The report's section "What the reward model rewards" (results.json's `inspect_rm`): placed after "What tuning
changed", the cue words in plain words, the gain split as one bar, the parts that did not run said so, and a run that
did not open its reward model without the section."""

from __future__ import annotations

import html
import json
import re

import pytest

from report_results import make_diff, make_inspect_rm, section
from rlhf_lens.errors import UserError
from rlhf_lens.report import write_report
from rlhf_lens.report.inspect_rm import CLASSES

TITLE = "What the reward model rewards"


def _results(inspect_rm: dict | None = None, point: dict | None = None) -> dict:
    """A run with a diff, a PPO gold curve (an overoptimisation point when given) and, when given, `inspect_rm`."""
    curve = {"has_gold": True, "point": point, "gold_trend": "rising", "verdict": "no overoptimisation point"}
    results = {"title": "demo-rm", "models": {"base": "base", "tuned": "rlhf/model"}, "diff": make_diff(),
               "ppo": {"gold": {"curve": curve, "evals": []}}}
    if inspect_rm is not None:
        results["inspect_rm"] = inspect_rm
    return results


def _write(run_dir, results: dict) -> tuple[str, str]:
    """(the page, summary.md) of `results` written by write_report."""
    (run_dir / "results.json").write_text(json.dumps(results))
    html_path, md_path = write_report(run_dir)
    return html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


def _md_section(md: str, title: str) -> str:
    return md.split(f"## {title}\n")[1].split("\n## ")[0]


def _page_text(fragment: str) -> str:
    """An HTML fragment as a reader sees it: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def test_the_section_follows_what_tuning_changed_and_names_the_cue(tmp_path):
    page, md = _write(tmp_path, _results(make_inspect_rm(cue=True)))
    sections = re.findall(r'<section id="([^"]+)">', page)
    assert sections[sections.index("diff") + 1] == "inspect-rm"
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert headings[headings.index("What tuning changed") + 1] == TITLE
    said = ("The RM pays for 'indeed' (+0.65 a text, 4.1 SDs beyond 30 random words, p = 0.001 after Holm), which the "
            "gold values at 0 (its change: +0; the placebo RM's change: +0.01).")
    shown = _page_text(section(page, "inspect-rm"))
    body = _md_section(md, TITLE)
    assert said in " ".join(shown.split()) and said in body
    # only the word flagged as a cue gets the sentence; the others are in the table of tested words
    assert "pays for 'truly'" not in body and "| truly | scan | 2.1 | 0 | +0.12 ± 0.04 |" in body
    # the verdict first, with the tune's gold curve beside it
    assert body.index("Verdict: the policy's gain rests partly on an RM flaw") < body.index("The RM pays for")
    assert "no overoptimisation point within the run (the gold was rising" in body
    # the token scan against the gold, the gold's words the RM ignores, the promoted words that game
    assert "ρ = 0.38 (p = 2.00e-09, 2,710 words)" in body and "ρ = 0.11 (p = 3.00e-06, 9,120 words)" in body
    assert "| wonderful | -0.4 | 3.4 |" in body
    assert "the RM pays for them, the gold does not): 'indeed'." in body
    assert "named 9 features gold-aligned" in body and "named 0.75 and 0 on average" in body
    # the features with the SAE's error term as its own row, a card for the explained one only, the probe, exactness
    assert "| 17 | cue | +0.24 ± 0.03 | +0.31 ± 0.05 (q = 0.002) | 0.02 | 0.8 | indeed, truly |" in body
    assert "| SAE error | error | +0.04 ± 0.02 | +0.03 ± 0.02 |" in body
    cards = body.split("#### Feature cards")[1].split("###")[0]
    assert "the word 'indeed' \\<emphasis\\>" in cards and "| 5 |" not in cards
    assert "&lt;emphasis&gt;" in page and "<emphasis>" not in page
    assert "| tuned (block 3) | 3 | 81.0% ± 3.0% |" in body and "| random control | 3 | 52.0% ± 5.0% |" in body
    assert "(chance 50.0%)" in body and "| tuned (block 3) | 41 | 1.9 | emphatic agreement |" in body
    assert "max relative error of 3.10e-06 over 1,024 texts" in body
    assert "not run" not in body and "not run" not in section(page, "inspect-rm")


def test_the_gain_split_is_one_bar_with_its_shares(tmp_path):
    inspect_rm = make_inspect_rm(cue=True)
    page, md = _write(tmp_path, _results(inspect_rm))
    split = inspect_rm["gain"]["split"]
    body = _md_section(md, TITLE)
    assert ("+0.84 ± 0.05 (p = 0.001). Its shares: gold 62.0% (+0.52, p = 0.001); anti-gold -3.6% (-0.03, p = 0.2); "
            "cue 31.0% (+0.26, p = 0.001); other 6.0% (+0.05, p = 0.1); error 4.8% (+0.04, p = 0.05).") in body
    assert "The placebo RM's gain on the same completions: +0.02 ± 0.04 (p = 0.61)." in body
    shown = section(page, "inspect-rm")
    assert shown.count("<svg") == 1
    rects = re.findall(r'<rect x="([\d.]+)" y="0" width="([\d.]+)"[^>]*><title>([^<]+)</title>', shown)
    widths = {title.split()[0]: float(width) for _, width, title in rects}
    assert set(widths) == set(CLASSES)
    # every part's width is its share of the bar's span (positives right of 0, the negative anti-gold left of it)
    span = sum(abs(v["share"]) for v in split.values())
    total = sum(widths.values())
    for name in CLASSES:
        assert widths[name] / total == pytest.approx(abs(split[name]["share"]) / span, abs=1e-3), name
    starts = {title.split()[0]: float(x) for x, _, title in rects}
    assert starts["anti-gold"] == 0.0 and starts["gold"] == pytest.approx(widths["anti-gold"], abs=0.2)
    for name in CLASSES:
        assert f"{name} {100 * split[name]['share']:.1f}%" in _page_text(shown)


def test_without_a_cue_the_tested_words_are_said_with_the_top_ones_figures(tmp_path):
    """The negative control (the bias off): no cue sentence; the words tested, none beyond the random words."""
    _, md = _write(tmp_path, _results(make_inspect_rm(cue=False)))
    body = _md_section(md, TITLE)
    assert "The RM pays for" not in body
    assert ("None of the 3 tested words ('indeed', 'truly', 'great') paid beyond the 30 random words. The top one, "
            "'indeed': +0.1 a text, 0.9 SDs from the random words' mean, p = 0.6 after Holm; the gold values it at 0") in body
    assert "Verdict: the RM rewards what the gold rewards" in body


def test_parts_that_did_not_run_say_so(tmp_path):
    inspect_rm = make_inspect_rm(cue=True)
    inspect_rm |= {"probe": None, "placebo_rm": None}
    inspect_rm["gain"]["placebo_total"] = None
    inspect_rm["token_scan"]["promoted"] = None
    for row in inspect_rm["token_scan"]["tested"]:
        row["placebo_effect"] = None
    page, md = _write(tmp_path, _results(inspect_rm))
    body = _md_section(md, TITLE)
    assert "The feedback probe: not run" in body and "#### The probe's top features" not in body
    assert "The placebo RM's gain: not run (no placebo RM: rm.placebo was off)." in body
    assert "The placebo RM on the same insertions: not run" in body and "placebo RM's change" not in body
    assert "The diff's promoted words: not run" in body
    assert "The feedback probe: not run" in _page_text(section(page, "inspect-rm"))
    # the rest is drawn as before
    assert "The RM pays for 'indeed'" in body and "Its shares: gold 62.0%" in body


def test_the_overoptimisation_point_is_beside_the_verdict(tmp_path):
    point = {"sqrt_kl": 1.23, "step": 40, "low": 0.9, "high": 1.5, "share_inside": 0.93, "resamples": 200,
             "confident": True}
    _, md = _write(tmp_path, _results(make_inspect_rm(), point=point))
    assert ("The tune's gold curve peaked at √KL = 1.23 \\[0.9, 1.5\\] (step ~40) while the proxy (this RM) kept rising"
            in _md_section(md, TITLE))
    _, md = _write(tmp_path, _results(make_inspect_rm(), point={**point, "confident": False, "share_inside": 0.4}))
    assert "but only in 40.0% of the prompt resamples: no confident overoptimisation point" in _md_section(md, TITLE)
    results = _results(make_inspect_rm())
    del results["ppo"]
    _, md = _write(tmp_path, results)
    assert "No gold curve of the tune to set beside it" in _md_section(md, TITLE)


def test_a_run_that_did_not_open_its_reward_model_has_no_such_section(tmp_path):
    page, md = _write(tmp_path, _results(None))
    assert 'id="inspect-rm"' not in page and TITLE not in page and TITLE not in md
    assert 'id="diff"' in page


@pytest.mark.parametrize("path, value, said", [
    (("token_scan", "tested"), 5, "inspect_rm.token_scan.tested must be a list, not a number"),
    (("gain", "split"), [0.5, 0.5], "inspect_rm.gain.split must be an object, not a list"),
    (("probe", "dictionaries"), "tuned", "inspect_rm.probe.dictionaries must be an object, not text"),
])
def test_a_malformed_field_is_one_line_naming_it(tmp_path, path, value, said):
    inspect_rm = make_inspect_rm()
    node = inspect_rm
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (tmp_path / "results.json").write_text(json.dumps(_results(inspect_rm)))
    with pytest.raises(UserError, match=re.escape(f"results.json: {said}")) as raised:
        write_report(tmp_path)
    assert TITLE in str(raised.value) and "\n" not in str(raised.value)


def test_an_inspect_rm_that_is_not_an_object_is_named(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results([make_inspect_rm()])))
    with pytest.raises(UserError, match=re.escape("results.json: section 'inspect_rm' must be an object or null")):
        write_report(tmp_path)
