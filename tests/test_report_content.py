"""What the report says: a malformed results.json named field by field, verdicts coloured and worded by direction,
the notes a reader needs (other prompts, a tune that barely moved, a control that scores highest), verdicts in
words, and a model tuned elsewhere said so."""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from conftest import assert_user_error, run_cli
from report_results import make_results, section
from rlhf_lens.errors import UserError
from rlhf_lens.report import write_report


@pytest.fixture
def run_dir(tmp_path):
    """A run folder holding the test's results.json."""
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    return tmp_path


def _write(run_dir, results: dict) -> tuple[str, str]:
    (run_dir / "results.json").write_text(json.dumps(results))
    html_path, md_path = write_report(run_dir)
    return html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


def _plant(path: str, value):
    """A copy of the test's results.json with the field at `path` (a.b[0].c) set to `value` (or removed: ...)."""
    results = make_results()
    *parents, last = re.findall(r"[^.\[\]]+", path)
    node = results
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    key = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return results


@pytest.mark.parametrize("path, value, said", [
    ("diff.steering.0", 3, "diff.steering[0] must be an object, not a number"),
    ("decompose.blocks.0.diff_sae.top", 5, "decompose.blocks[0].diff_sae.top must be a list, not a number"),
    ("diff.reference", 4, "diff.reference must be an object, not a number"),
    ("diff.output.promoted", {"love": 3.2}, "diff.output.promoted must be a list, not an object"),
    ("ppo.eval.base", [0.1, 0.2], "ppo.eval.base must be an object, not a list"),
    ("features.0.examples", 7, "features[0].examples must be a list, not a number"),
    ("mmcs.0.values", 0.8, "mmcs[0].values must be a list, not a number"),
    ("utility.per_block", "block 1", "utility.per_block must be a list, not text"),
    ("config.interp", 5, "config.interp must be an object, not a number"),
    ("decompose.blocks.0.diff_sae.top.0.latent", ..., "decompose.blocks[0].diff_sae.top[0].latent is missing"),
])
def test_a_malformed_field_is_named_and_nothing_is_written(run_dir, path, value, said):
    """Item 5: a nested field of the wrong type (or missing) is one UserError naming it and the section it broke;
    the report files already there stay as they were."""
    write_report(run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("report.html", "summary.md")}
    (run_dir / "results.json").write_text(json.dumps(_plant(path, value)))
    with pytest.raises(UserError, match=re.escape(f"results.json: {said}")) as raised:
        write_report(run_dir)
    assert "could not be drawn" in str(raised.value) and "rlhf-lens run" in str(raised.value)
    assert before == {name: (run_dir / name).read_bytes() for name in before}


def test_a_malformed_field_on_the_command_line_is_one_line(run_dir):
    (run_dir / "results.json").write_text(json.dumps(_plant("diff.steering.0", 3)))
    assert_user_error(run_cli("report", run_dir), "results.json: diff.steering[0] must be an object",
                      "Headline numbers")
    assert not (run_dir / "report.html").exists() and not (run_dir / "summary.md").exists()


def _headline_row(name: str, base: list[float], tuned: list[float]) -> dict:
    def stat(values):
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return {"mean": mean, "std": std, "n": len(values), "values": values}

    return {"name": name, "base": stat(base), "tuned": stat(tuned), "control": None, "n_seeds": len(base)}


def test_verdicts_are_coloured_and_worded_by_direction(run_dir):
    """Item 11: the headline measures are expected to rise with tuning; a clear decrease is red and says "lower than
    base, against the expected direction", a clear increase is green and says "higher than base"."""
    results = make_results()
    results["headline"] = [_headline_row("utility score", [10.0, 10.2, 9.8], [6.6, 6.8, 6.4]),
                           _headline_row("simulation score", [0.30, 0.31, 0.29], [0.40, 0.41, 0.39]),
                           _headline_row("reward alignment", [1.0, 1.4, 0.6], [0.4, 0.8, 0.0]),
                           _headline_row("MMCS (within)", [0.80, 0.90, 0.70], [0.81, 0.91, 0.71])]
    page, md = _write(run_dir, results)
    spans = dict(re.findall(r'<span class="verdict ([\w-]+)">([^<]*)</span>', section(page, "headline")))
    assert spans["against"].startswith("lower than base, against the expected direction (tuned above base): "
                                       "tuned - base = -3.4, more than twice")
    assert spans["yes"].startswith("higher than base: tuned - base = +0.1, more than twice")
    assert spans["against-maybe"].startswith("lower than base: tuned - base = -0.6, above the combined seed spread")
    assert spans["no"].startswith("tuned - base = +0.01, within the combined seed spread")
    assert "| utility score | 10 ± 0.2 | 6.6 ± 0.2 | - | 3 | lower than base, against the expected direction" in md


def test_the_notes_a_reader_needs(run_dir):
    """Item 12: why the steering's base and tuned rewards are not the PPO section's (said in both places); a tune
    that barely moved the held-out reward flagged at the top; the random-init control scoring highest said plainly
    where it happens; the diff's verdicts in words, not keys."""
    results = make_results()
    results["config"]["rlhf"] = {"min_new_tokens": 8, "max_new_tokens": 19}
    results["ppo"]["eval"]["tuned"] = {"mean": 0.08, "se": 0.03, "positive_frac": 0.33}
    results["headline"][2]["control"] = {"mean": 30.0, "std": 1.0, "n": 2}
    results["utility"]["total"]["control"] = 40.0
    page, md = _write(run_dir, results)
    diff, ppo = section(page, "diff"), section(page, "ppo")
    for text in (html.unescape(diff), md.replace("\\", "")):
        assert "These are the diff's own prompts (diff.prompts = 24, continued by diff.new_tokens = 12 tokens" in text
        assert "is over 64 other prompts (rlhf.eval_prompts) continued by 8-19 tokens" in text
    assert "on the diff's own 24 prompts" in html.unescape(ppo)
    moved = ("The tune moved the held-out reward by +0.02 \u00b1 0.0361 (tuned \u2212 base \u00b1 se, 64 prompts), "
             "within 2 standard errors of no change: expect null verdicts below.")
    header = page.split("<nav>")[0]
    assert f'<p class="alert">{moved}</p>' in header and f"**{moved}**" in md.split("## Headline")[0]
    control = "The random-init control scores highest on utility score: an untrained model's features score as high"
    assert control in html.unescape(section(page, "headline")) and "30 \u00b1 1 (highest)" in section(page, "headline")
    assert "utility score (total)" in section(page, "utility") and control in md.replace("\\", "")
    for text in (diff, md):
        assert "steering by \u0394 at block 3" in text and "words tuning promotes" in text
    assert "steering_3" not in page and "steering\\_3 |" not in md

    results = make_results()  # a tune that moved the reward far beyond its standard errors: no such line
    page, md = _write(run_dir, results)
    assert 'class="alert"' not in page and "expect null verdicts" not in md


def test_a_model_tuned_elsewhere_is_said_so_with_resolved_names(tmp_path, tiny_model_dir, corpus_file, monkeypatch):
    """Item 14: with model.tuned (typed as relative paths) the title says "tuned elsewhere" with the models' resolved
    folders, and the section on the tune is headed and worded for a model tuned elsewhere, not "PPO fine-tuning"."""
    from rlhf_lens.config import load_config
    from rlhf_lens.pipeline.results import report_title, shown_model
    from rlhf_lens.pipeline.stages import stage_rlhf

    monkeypatch.chdir(tmp_path)
    for name in ("base", "tuned"):
        shutil.copytree(tiny_model_dir, tmp_path / "t1" / name)
    config = load_config(overrides=["model.base=./t1/base", "model.tuned=./t1/tuned", f"data.corpus={corpus_file}",
                                    "rlhf.steps=0", "rlhf.eval_prompts=8", "rlhf.batch_size=8",
                                    "rlhf.mini_batch_size=8"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = {"base": {"spec": config.model.base}}
    state["rlhf"] = stage_rlhf(config, run_dir, state)  # the real evaluation of both models, no PPO
    title = report_title(config, run_dir)
    resolved = tmp_path.resolve() / "t1"
    assert title == f"rlhf-lens: {resolved / 'base'} vs {resolved / 'tuned'}, tuned elsewhere"
    results = {"title": title, "config": config.to_dict(),
               "models": {"base": shown_model(state["base"], run_dir), "tuned": shown_model(state["rlhf"], run_dir)},
               "ppo": {"log": [], "eval": json.loads((run_dir / "rlhf" / "eval.json").read_text())}}
    assert results["models"] == {"base": str(resolved / "base"), "tuned": str(resolved / "tuned")}
    page, md = _write(run_dir, results)
    assert "./t1" not in page.split('<section id="config">')[0] and "./t1" not in md  # the config keeps what was typed
    assert "PPO fine-tuning" not in page and "PPO fine-tuning" not in md
    ppo = section(page, "ppo")
    assert ppo.startswith("<h2>Tuned elsewhere: held-out reward</h2>") and "## Tuned elsewhere: held-out reward" in md
    assert f"The tuned model ({resolved / 'tuned'}) was tuned elsewhere: no PPO ran in this run" in ppo
    assert "not run" not in ppo and "Held-out reward (8 prompts)" in ppo
