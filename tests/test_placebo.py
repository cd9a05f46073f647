"""The placebo control calibrated (issue 24, item 6): several placebo seeds, the real tune's utility of the change
tested against their spread by a prediction interval (no test from one seed or a zero spread), the signed utility in
the headline, the placebo's KL beside the real tune's; and corpora of short documents (item 10)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_user_error, make_reviews, run_cli
from report_results import make_results, with_placebo_and_crosscoder
from rlhf_lens.config import load_config
from rlhf_lens.decompose.run import add_signed_utility, placebo_comparison
from rlhf_lens.errors import UserError
from rlhf_lens.nulls import binomial_interval
from rlhf_lens.report import render_html, render_markdown
from rlhf_lens.report.decompose import change_utility_row, placebo_kl_row

# --- the comparison with the placebo seeds ----------------------------------------------------------------------


def test_one_placebo_seed_gives_no_test_and_no_claim():
    result = placebo_comparison(2.0, [0.3], level=0.05)
    assert result["p"] is None and result["beyond"] is None and result["n"] == 1
    assert result["verdict"] == "one placebo: no spread to test against"


def test_a_zero_spread_is_no_test_never_not_distinguishable():
    result = placebo_comparison(0.31, [0.3, 0.3, 0.3], level=0.05)
    assert result["p"] is None and result["beyond"] is None and result["std"] == 0.0
    assert "no spread to test against" in result["verdict"] and "distinguishable" not in result["verdict"]


def test_three_placebo_seeds_flag_a_change_far_beyond_them_and_not_one_within():
    far = placebo_comparison(5.0, [0.2, -0.1, 0.4], level=0.05)
    assert far["beyond"] is True and far["df"] == 2 and far["p"] <= 0.05
    assert far["verdict"].startswith("beyond the placebo tunes (prediction-interval t test over 3 placebo seeds")
    within = placebo_comparison(0.3, [0.2, -0.1, 0.4], level=0.05)
    assert within["beyond"] is False and within["p"] > 0.05
    assert within["verdict"].startswith("not beyond the placebo tunes") and "p = " in within["verdict"]
    # one-sided: a change far below the placebo is not "beyond" it
    assert placebo_comparison(-5.0, [0.2, -0.1, 0.4])["beyond"] is False


@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_prediction_interval_test_holds_its_level_on_normal_placebos(n):
    """Negative control: the real value one more draw of the placebo's own normal distribution; the rate of
    "beyond" over 4,000 such cases has the nominal level inside its 99% Clopper-Pearson interval."""
    rng = np.random.default_rng(n)
    level, cases = 0.05, 4000
    hits = 0
    for _ in range(cases):
        draws = rng.normal(1.0, 0.5, size=n + 1)
        hits += bool(placebo_comparison(float(draws[0]), list(draws[1:]), level)["beyond"])
    lo, hi = binomial_interval(hits, cases, level=0.99)
    assert lo <= level <= hi, (hits / cases, lo, hi)


def test_no_utility_of_the_change_is_no_test():
    assert placebo_comparison(None, [0.1, 0.2, 0.3])["beyond"] is None


# --- the signed utility -----------------------------------------------------------------------------------------


def _block(*explanations_by_seed):
    return {"diff_sae": {"features": [{"sae": sae, "explanation": text, "utility": None}
                                      for sae, texts in explanations_by_seed for text in texts]}}


def test_the_signed_utility_keeps_the_sign_the_magnitude_hides():
    """VADER: 'terrible awful' is negative; the magnitude-based score counts it as much as 'great happy'."""
    result = {"blocks": [_block(("s0", ["terrible awful"]), ("s1", ["terrible awful", "great"]))],
              "utility_of_change": {"mean": 3.0, "std": 0.0}}
    signed = add_signed_utility(result, "vader", "mean")["utility_of_change"]["signed"]
    assert signed["seeds"] == ["s0", "s1"] and signed["n"] == 2
    s0, s1 = signed["values"]
    assert s0 < 0 and s1 > s0  # s1 adds a positive word to the same negative one
    from rlhf_lens.interp.utility import explanation_utility, signed_explanation_utility
    from rlhf_lens.rewards import load_utility_table

    table = load_utility_table("vader")
    assert explanation_utility("terrible awful", table)[0] == -signed_explanation_utility("terrible awful", table)[0]


def _with_seeds(values: list[float], real: float = 2.5) -> dict:
    results = with_placebo_and_crosscoder(make_results())
    results["decompose"]["utility_of_change"]["signed"] = {"mean": real, "std": 0.4, "n": 2, "values": [2.2, 2.8]}
    seeds = [{"seed": s, "table": f"placebo/seed{s}/table.tsv",
              "utility_of_change": {"mean": abs(v), "std": 0.1, "n": 2, "signed": {"mean": v, "std": 0.1, "n": 2}},
              "kl": {"ppo": 0.4 + s / 10, "diff": 0.02 + s / 100}} for s, v in enumerate(values)]
    results["placebo"].update({"seeds": seeds, "tuned_kl": {"ppo": 0.5, "diff": 0.03},
                               "comparison": placebo_comparison(real, values, 0.05)})
    return results


def test_the_headline_shows_the_signed_utility_and_the_placebo_test():
    results = _with_seeds([-0.2, 0.1, 0.05], real=-1.75)
    row = change_utility_row(results["decompose"], results["placebo"])
    assert row[1].startswith("-1.75 \u00b1 0.4 signed (|.| 3 \u00b1 0.5")
    assert "placebo tunes (3 seeds, signed): -0.2, 0.1, 0.05" == row[2]
    # far below the placebo: no claim of "beyond", and the test is named with its p-value
    assert row[3].startswith("not beyond the placebo tunes (prediction-interval t test over 3 placebo seeds")
    md, page = render_markdown(results), render_html(results)
    for text in ("-1.75 \u00b1 0.4 signed", "prediction-interval t test over 3 placebo seeds",
                 "KL to base, nats", "seed 2: PPO 0.6, diff 0.04"):
        assert text in md and text in page


def test_the_kl_row_puts_each_placebo_beside_the_real_tune():
    row = placebo_kl_row(_with_seeds([0.1, 0.2])["placebo"])
    assert row[1] == "tuned: PPO 0.5, diff 0.03"
    assert row[2] == "placebo tunes: seed 0: PPO 0.4, diff 0.02; seed 1: PPO 0.5, diff 0.03"
    assert placebo_kl_row(None) is None


def test_a_run_with_one_placebo_from_before_the_seeds_still_renders():
    """results.json as a run with one placebo wrote it (no seeds, no comparison, no signed utility)."""
    results = with_placebo_and_crosscoder(make_results())
    row = change_utility_row(results["decompose"], results["placebo"])
    assert row[1] == "|.| 3 \u00b1 0.5 (2 seeds)" and row[3] == "one placebo: no spread to test against"
    assert "one placebo: no spread to test against" in render_markdown(results)
    assert placebo_kl_row(results["placebo"]) is None


# --- the setting ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["[]", "[1, 1]", "[-1]"])
def test_bad_placebo_seeds_name_the_key(value):
    with pytest.raises(UserError, match=r"controls\.placebo_seeds"):
        load_config(overrides=[f"controls.placebo_seeds={value}"])


def test_placebo_seeds_rerun_the_placebo_only_when_it_is_on():
    from rlhf_lens.pipeline.runner import stage_keys

    off = stage_keys(load_config(preset="tiny"))
    assert off == stage_keys(load_config(preset="tiny", overrides=["controls.placebo_seeds=[0, 1, 2]"]))
    on = stage_keys(load_config(preset="tiny", overrides=["controls.placebo=true"]))
    more = stage_keys(load_config(preset="tiny", overrides=["controls.placebo=true", "controls.placebo_seeds=[0, 1]"]))
    assert on["placebo"] != more["placebo"] and on["rlhf"] == more["rlhf"] and on["diff"] != more["diff"]


# --- short documents --------------------------------------------------------------------------------------------


def short_rows(n_reviews: int = 300) -> list[dict]:
    """Sentences of 14 words (under 100 characters) cut from the synthetic reviews, splits kept."""
    rows = []
    for review in make_reviews(n_reviews):
        words = review["text"].split()
        rows += [{"text": " ".join(words[i:i + 14]), "label": review["label"], "split": review["split"]}
                 for i in range(0, len(words) - 12, 14)]
    return rows


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("short") / "sentences.jsonl"
    rows = short_rows()
    assert max(len(r["text"]) for r in rows) < 200
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_short_documents_give_prompts_everywhere_said_once(short_corpus, tiny_model_dir, capsys):
    """PPO's prompts, its held-out evaluation and the diff's held-out prompts draw the same way: on a corpus of short
    sentences, from its documents of at least prompt_min_tokens tokens, said once on stderr and in eval.json."""
    from transformers import AutoTokenizer

    from rlhf_lens import data
    from rlhf_lens.diff.steering import heldout_prompts
    from rlhf_lens.rlhf import PPOConfig
    from rlhf_lens.rlhf.run import heldout_eval_prompts, prompt_notes

    data._NOTED.clear()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    corpus = data.load_corpus(str(short_corpus))
    ppo = data.sample_prompts(corpus, tok, 32, seed=1, split="train")
    again = data.sample_prompts(corpus, tok, 32, seed=1, split="train")
    evaluation = heldout_eval_prompts(corpus, tok, PPOConfig(eval_prompts=16))
    held = heldout_prompts(corpus, tok, 16, "test", [], 0, min_chars=200)
    assert ppo == again and all(2 <= len(p) <= 9 for p in ppo + evaluation + held)
    err = capsys.readouterr().err
    assert err.count("has no document longer than 200 characters (rlhf.prompt_min_chars): prompts come from") == 1 \
        + 1 + 1  # once per split (train, test, the diff's held-out split), never per call
    assert prompt_notes(corpus, tok, PPOConfig()) and "rlhf.prompt_min_chars" in prompt_notes(corpus, tok, PPOConfig())[0]
    # a min_chars the documents do reach: the paper's rule, no note
    assert prompt_notes(corpus, tok, PPOConfig(prompt_min_chars=20)) == []
    # heldout_prompts honours the run's min_chars: every prompt starts one of the documents longer than it
    long_docs = [tok(d.text, add_special_tokens=False)["input_ids"] for d in corpus.documents("test")
                 if len(d.text) > 70]
    short_docs = [tok(d.text, add_special_tokens=False)["input_ids"] for d in corpus.documents("test")
                  if len(d.text) <= 70]
    assert long_docs and short_docs
    for prompt in heldout_prompts(corpus, tok, 16, "test", [], 0, min_chars=70):
        assert any(ids[:len(prompt)] == prompt for ids in long_docs)


def test_a_corpus_too_short_for_any_prompt_fails_naming_the_settings(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from rlhf_lens.data import load_corpus, sample_prompts

    path = tmp_path / "words.txt"
    path.write_text("good\nbad\nfine\n" * 20)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match=r"rlhf\.prompt_min_chars\) nor any of 5 tokens or more "
                                        r"\(rlhf\.prompt_min_tokens\)"):
        sample_prompts(load_corpus(str(path)), tok, 4, min_tokens=5, max_tokens=9)
    # the run stops with that one line before any work: nothing written
    out = tmp_path / "run"
    assert_user_error(run_cli("run", "--preset", "tiny", "--set", f"data.corpus={path}", "--set",
                              f"model.base={tiny_model_dir}", "--set", "rlhf.prompt_min_tokens=5", "--out", str(out)),
                      "rlhf.prompt_min_tokens")
    assert not out.exists()


def test_each_placebo_seed_is_its_own_permutation_and_its_own_ppo_seed(tmp_path, tiny_model_dir, corpus_file):
    """controls.placebo_seeds = [0, 1]: placebo/seed{s}/ with its own table and PPO run, the first seed's model as
    the run's `placebo`; the PPO seeds differ from each other and from the real tune's."""
    from rlhf_lens.pipeline.stages import stage_placebo
    from rlhf_lens.rewards import load_utility_table

    table = tmp_path / "six.csv"
    table.write_text("film,1\nmovie,2\nstory,-1\nplot,3\nscene,-2\nactor,0.5\n")
    config = load_config(overrides=[f"model.base={tiny_model_dir}", f"data.corpus={corpus_file}",
                                    f"reward.spec=table:{table}", "controls.placebo=true",
                                    "controls.placebo_seeds=[0, 1]", "rlhf.steps=1", "rlhf.batch_size=8",
                                    "rlhf.mini_batch_size=8", "rlhf.eval_prompts=4"])
    outputs = stage_placebo(config, tmp_path, {"base": {"spec": str(tiny_model_dir)}})
    assert [r["seed"] for r in outputs["seeds"]] == [0, 1] and outputs["dir"] == outputs["seeds"][0]["dir"]
    tables = [load_utility_table(str(tmp_path / r["table"])) for r in outputs["seeds"]]
    assert tables[0] != tables[1] and all(sorted(t.values()) == [-2, -1, 0.5, 1, 2, 3] for t in tables)
    ppo_seeds = [json.loads((tmp_path / r["ppo"] / "config.json").read_text())["config"]["seed"]
                 for r in outputs["seeds"]]
    assert len({*ppo_seeds, config.rlhf.seed}) == 3
    assert all((tmp_path / f"placebo/seed{s}/ppo/eval.json").is_file() for s in (0, 1))
