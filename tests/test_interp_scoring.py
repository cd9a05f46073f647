"""interp: normalisation, Pearson scoring, exact prompts, strict parsing, the offline explainer, utility scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_lens.errors import UserError
from rlhf_lens.interp import explanation_utility, normalise, pearson, simulation_score, utility_scores
from rlhf_lens.interp.explainers import explain_offline, get_explainer, simulate_offline
from rlhf_lens.interp.prompts import explanation_messages, parse_explanation, parse_simulation, simulation_messages
from rlhf_lens.interp.text import show_token, token_keys
from rlhf_lens.interp.utility import reward_alignment, token_utilities

# --- normalisation -----------------------------------------------------------------------------


def test_normalise_floors_by_the_max_over_all_shown_records():
    values = [[0.0, 2.5, 5.0, -1.0], [10.0, 9.99, 0.99]]
    assert normalise(values) == [[0, 2, 5, 0], [10, 9, 0]]


def test_normalise_all_zero_and_negative_records_give_zeros():
    assert normalise([[0.0, 0.0], [-3.0]]) == [[0, 0], [0]]
    assert normalise([]) == []


# --- Pearson -----------------------------------------------------------------------------------


def test_pearson_matches_numpy_and_is_symmetric():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert pearson(x, y) == pytest.approx(pearson(y, x))
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)


@pytest.mark.parametrize("x, y", [
    ([1.0, 1.0, 1.0], [0.0, 5.0, 1.0]),    # constant prediction
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),    # all zeros on both sides
    ([0.0, 1.0, 2.0], [7.0, 7.0, 7.0]),    # constant truth
    ([3.0], [4.0]),                        # a single value
    ([], []),
])
def test_pearson_of_degenerate_inputs_is_zero_not_nan(x, y):
    value = pearson(x, y)
    assert value == 0.0 and not math.isnan(value)


def test_pearson_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        pearson([1.0, 2.0], [1.0])


def test_simulation_score_concatenates_records():
    sim = [[0, 10, 0], [10, 0]]
    true = [[0.1, 3.0, 0.0], [2.5, 0.2]]
    assert simulation_score(sim, true) == pytest.approx(pearson([0, 10, 0, 10, 0], [0.1, 3.0, 0.0, 2.5, 0.2]))
    assert simulation_score([[0, 0], [0]], [[1, 2], [3]]) == 0.0


# --- prompts (exact strings) -------------------------------------------------------------------


def test_explanation_prompt_is_exactly_as_specified():
    messages = explanation_messages("7", [[" good", " film", "\n"], ["It", " was"]], [[10, 2, 0], [0, 4]])
    assert messages[0] == {"role": "system", "content": (
        "We are studying features of a sparse autoencoder trained on the activations of a language model. "
        "Each feature responds to some particular pattern in short texts. You will see texts written one token "
        "per line; after each token comes a tab and the feature's activation on that token, an integer from "
        "0 (silent) to 10 (its strongest response). Look at where the feature is active and say in a single "
        "sentence what it responds to. Do not list every token.")}
    assert messages[1] == {"role": "user", "content": (
        "Feature 7\n\n"
        "Text 1:\n<start>\n good\t10\n film\t2\n\\n\t0\n<end>\n\n"
        "Text 2:\n<start>\nIt\t0\n was\t4\n<end>\n\n"
        "In one sentence, what does feature 7 respond to?")}


def test_simulation_prompt_is_exactly_as_specified():
    messages = simulation_messages("Fires on \"good\".", ["The", " good", " ", "\t"])
    assert messages[0] == {"role": "system", "content": (
        "We are studying features of a sparse autoencoder trained on the activations of a language model. "
        "Given an explanation of what a feature responds to, predict the feature's activation on every token "
        "of a text, as an integer from 0 (silent) to 10 (its strongest response). Answer with exactly one line "
        "per token, in the order given; each line is the token exactly as shown, a tab, and the integer. "
        "Write nothing else.")}
    assert messages[1] == {"role": "user", "content": (
        "Explanation of the feature: Fires on \"good\".\n\nTokens:\n<start>\nThe\n good\n\u2423\n\\t\n<end>")}


def test_show_token_makes_every_token_one_visible_line():
    assert show_token("a\nb") == "a\\nb"
    assert show_token("  ") == "\u2423\u2423"
    assert show_token("") == "\u2205"


# --- strict parsing ----------------------------------------------------------------------------


def test_parse_simulation_accepts_the_format_with_tolerated_wrapping():
    tokens = ["The", " good", "\n"]
    assert parse_simulation("The\t0\ngood\t10\n\\n\t3", tokens) == [0, 10, 3]
    assert parse_simulation("```\n<start>\nThe\t0\n\n good\t7\n\\n\t0\n<end>\n```\n", tokens) == [0, 7, 0]


@pytest.mark.parametrize("answer, fragment", [
    ("The\t0\ngood\t10", "2 lines for 3 tokens"),
    ("The\t0\nbad\t10\n\\n\t0", "expected 'good'"),
    ("The\t0\ngood\t11\n\\n\t0", "not an integer 0..10"),
    ("The\t0\ngood\t4.5\n\\n\t0", "not an integer 0..10"),
    ("The 0\ngood\t1\n\\n\t0", "has no tab"),
    ("", "0 lines for 3 tokens"),
])
def test_parse_simulation_rejects_malformed_answers(answer, fragment):
    with pytest.raises(UserError, match="malformed simulator answer") as info:
        parse_simulation(answer, ["The", " good", "\n"])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_explanation_takes_the_first_line_without_quotes():
    assert parse_explanation('\n "Positive words about films."\nMore text') == "Positive words about films."
    with pytest.raises(UserError, match="empty explanation"):
        parse_explanation("  \n ")


# --- units, offline explainer and simulator ------------------------------------------------------


def test_subword_pieces_belong_to_their_whole_word():
    tokens = ["It", " was", " wonder", "ful", ",", " :)", " \n", "GOOD", "!"]
    assert token_keys(tokens) == ["it", "was", "wonderful", "wonderful", ",", ":)", "", "good", "!"]


def test_offline_explainer_names_distinctive_units_and_context_deterministically():
    tokens = [["The", " film", " was", " great", " ."], ["A", " great", " movie", " ."],
              ["It", " was", " wonder", "ful", " ."]]
    acts = [[0, 0, 1, 10, 0], [0, 9, 0, 0], [0, 0, 8, 6, 0]]
    text = explain_offline(tokens, acts, corpus=None)
    assert text == 'Fires on "great" and "wonderful", often after "was".'
    assert explain_offline(tokens, acts, corpus=None) == text
    assert explain_offline(tokens, [[0] * len(t) for t in tokens], corpus=None) == "Silent on the shown texts."


def test_offline_explainer_adds_no_utility_of_its_own():
    """The utility score reads every word of an explanation, so the offline template must hold no
    word of the VADER lexicon: only the units it quotes may carry utility."""
    from rlhf_lens.rewards import load_utility_table

    vader = load_utility_table("vader")
    neutral = [["It", " was", " there", " ."], ["So", " was", " it", " ."]]
    explanations = [
        explain_offline(neutral, [[0, 9, 0, 0], [0, 10, 0, 0]], corpus=None),  # names units, with context
        explain_offline(neutral, [[1, 2, 1, 9], [2, 1, 2, 1]], corpus=None),  # fires broadly
        explain_offline(neutral, [[1, 2, 1, 2], [2, 1, 2, 1]], corpus=None),  # nothing reaches MIN_SHOWN
        explain_offline(neutral, [[0] * 4, [0] * 4], corpus=None),  # silent
    ]
    assert len(set(explanations)) == 4
    for text in explanations:
        assert explanation_utility(text, vader, "sum") == (0.0, {}), text


def test_offline_explainer_prefers_units_rare_in_the_corpus():
    from collections import Counter

    from rlhf_lens.interp.examples import CorpusStats

    tokens = [["the", " good", " the", " good"]]
    acts = [[10, 6, 10, 6]]
    common_the = CorpusStats(Counter({"the": 1000, "good": 2}), 1002)
    assert explain_offline(tokens, acts, corpus=common_the).startswith('Fires on "good"')
    assert explain_offline(tokens, acts, corpus=None).startswith('Fires on "the"')


def test_offline_simulator_predicts_quoted_units_by_rank():
    sim = simulate_offline('Fires on "great" and "wonderful", often after "was".',
                           ["It", " was", " wonder", "ful", " and", " great"])
    assert sim == [0.0, 0.0, 8.0, 8.0, 0.0, 10.0]
    # an explanation without quotes: its content words count
    assert simulate_offline("Positive words like great", ["a", " great", " positive"]) == [0.0, 5.0, 5.0]


def test_offline_explainer_round_trip_scores_high():
    explainer = get_explainer("offline")
    tokens = [["a", " great", " day"], ["so", " great"]]
    text = explainer.explain_many([("1", tokens, [[0, 10, 0], [0, 9]])])[0]
    sim = explainer.simulate_many([(text, [["the", " great", " film"], ["bad", " day"]])])[0]
    assert simulation_score(sim, [[0.0, 4.0, 0.1], [0.0, 0.0]]) > 0.9
    assert explainer.capabilities.deterministic and not explainer.capabilities.network


def test_unknown_explainer_is_a_user_error():
    with pytest.raises(UserError, match="unknown explainer 'gpt'"):
        get_explainer("gpt")
    with pytest.raises(UserError, match="unknown explainer"):
        get_explainer("hf:")


# --- utility score -----------------------------------------------------------------------------

TABLE = {"good": 2.0, "great": 3.0, "bad": -3.0, "dull": -1.0, ":)": 2.0}


def test_explanation_utility_equals_the_hand_computation():
    assert explanation_utility("Good, GREAT things!", TABLE, "mean") == (2.5, {"good": 2.0, "great": 3.0})
    assert explanation_utility("Good, GREAT things!", TABLE, "sum") == (5.0, {"good": 2.0, "great": 3.0})
    assert explanation_utility("bad and good", TABLE, "mean")[0] == pytest.approx(0.5)
    assert explanation_utility("bad, dull and good", TABLE, "sum")[0] == pytest.approx(2.0)
    assert explanation_utility("Fires on commas.", TABLE, "mean") == (0.0, {})
    with pytest.raises(UserError, match="unknown aggregate"):
        explanation_utility("good", TABLE, "max")


def _record(layer: int, feature: int, explanation: str, tokens=None, values=None) -> dict:
    tokens = tokens or ["a", " film"]
    values = values or [0.0, 1.0]
    return {"model": "m", "layer": layer, "sae": "s", "feature": feature, "explanation": explanation, "score": 0.5,
            "examples": [{"doc": 0, "kind": "top", "tokens": tokens, "values": values,
                          "activations": normalise([values])[0], "max_activation": max(values)}]}


def test_utility_scores_sum_per_block_and_model_as_by_hand():
    base = [_record(3, 0, "good things"), _record(3, 1, "bad or dull"), _record(4, 2, "nothing here")]
    tuned = [_record(3, 0, "great, great!"), _record(4, 5, "good and bad"), _record(4, 6, "good")]
    result = utility_scores({"base": base, "tuned": tuned}, TABLE, "mean")
    blocks = {b["layer"]: b for b in result["blocks"]}
    assert blocks[3]["base"]["utility"] == pytest.approx(2.0 + 2.0)
    assert blocks[4]["base"]["utility"] == pytest.approx(0.0)
    assert blocks[3]["tuned"]["utility"] == pytest.approx(3.0)
    assert blocks[4]["tuned"]["utility"] == pytest.approx(0.5 + 2.0)
    assert result["total"]["base"]["utility"] == pytest.approx(4.0)
    assert result["total"]["tuned"]["utility"] == pytest.approx(5.5)
    summed = utility_scores({"base": base, "tuned": tuned}, TABLE, "sum")
    assert summed["total"]["base"]["utility"] == pytest.approx(2.0 + 4.0)
    assert "utility" not in base[0]  # inputs are left alone


def test_reward_alignment_from_token_utilities():
    tokens = ["It", " was", " gre", "at", " and", " bad", " :)"]
    assert token_utilities(tokens, TABLE) == [0.0, 0.0, 3.0, 3.0, 0.0, -3.0, 2.0]
    record = _record(1, 0, "x", tokens, [0.0, 0.0, 5.0, 4.0, 0.0, 0.0, 1.0])
    got = reward_alignment(record, TABLE, top_tokens=2)
    assert got["reward_corr"] == pytest.approx(pearson(record["examples"][0]["values"],
                                                       [0.0, 0.0, 3.0, 3.0, 0.0, -3.0, 2.0]))
    assert got["positive_share"] == 1.0 and got["negative_share"] == 0.0 and got["sign_share"] == 1.0
    silent = reward_alignment(_record(1, 0, "x", tokens, [0.0] * 7), TABLE)
    assert silent["reward_corr"] == 0.0 and silent["positive_share"] == 0.0


def test_mean_std_is_the_sample_spread_over_seeds():
    from rlhf_lens.interp.utility import mean_std

    assert mean_std([1.0, 2.0, 6.0]) == {"mean": 3.0, "std": pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1)),
                                          "values": [1.0, 2.0, 6.0], "n": 3}
    assert mean_std([4.0]) == {"mean": 4.0, "std": 0.0, "values": [4.0], "n": 1}
    assert mean_std([]) == {"mean": None, "std": 0.0, "values": [], "n": 0}


def test_seed_scores_average_each_seeds_scores_and_give_a_verdict(tmp_path):
    """The run's headline: each seed's records scored on their own, then mean and sample std over seeds."""
    from rlhf_lens.interp.utility import seed_scores

    table = tmp_path / "table.csv"
    table.write_text("".join(f"{word},{value}\n" for word, value in TABLE.items() if word != ":)"))

    def seed(records: list[dict], s: int) -> list[dict]:
        return [{**r, "sae": f"s{s}"} for r in records]

    records = {"base": seed([_record(3, 0, "good things"), _record(4, 1, "nothing")], 0)
               + seed([_record(3, 0, "bad"), _record(4, 1, "dull")], 1),
               "tuned": seed([_record(3, 0, "great"), _record(4, 1, "good")], 0)
               + seed([_record(3, 0, "great"), _record(4, 1, "bad")], 1)}
    within = [{"model": m, "layer": layer, "seed": s, "mmcs": 0.1 * s + 0.01 * layer + (m == "tuned")}
              for m in ("base", "tuned") for layer in (3, 4) for s in (0, 1)]
    headline, utility = seed_scores(records, within, [0, 1], [3, 4], str(table), "mean")
    rows = {row["name"]: row for row in headline}
    assert list(rows) == ["MMCS (within)", "simulation score", "utility score", "reward alignment"]
    # utility per seed: base 2 + 0 (seed 0) and 3 + 1 (seed 1); tuned 3 + 2 and 3 + 3
    assert rows["utility score"]["base"]["values"] == [2.0, 4.0] and rows["utility score"]["tuned"]["values"] == [5.0, 6.0]
    assert rows["utility score"]["tuned"]["std"] == pytest.approx(np.std([5.0, 6.0], ddof=1))
    assert rows["MMCS (within)"]["base"]["values"] == pytest.approx([0.035, 0.135])  # mean over the blocks
    assert all(row["n_seeds"] == 2 and row["verdict"].startswith("tuned - base") for row in headline)
    assert utility["total"] == {"base": {"utility": 3.0, "reward_score": rows["reward alignment"]["base"]["mean"]},
                                "tuned": {"utility": 5.5, "reward_score": rows["reward alignment"]["tuned"]["mean"]}}
    assert [b["layer"] for b in utility["per_block"]] == [3, 4]
    assert utility["per_block"][0]["base"]["utility"] == pytest.approx((2.0 + 3.0) / 2)
    assert (utility["aggregate"], utility["table"], sorted(utility["per_seed"])) == ("mean", str(table), ["0", "1"])


def test_the_most_novel_new_features_of_a_block_come_first():
    from rlhf_lens.interp.features import most_novel

    new = [{"layer": 2, "feature": 5, "max_cosine_to_base": 0.3}, {"layer": 3, "feature": 1, "max_cosine_to_base": 0.1},
           {"layer": 2, "feature": 9, "max_cosine_to_base": 0.2}, {"layer": 2, "feature": 4, "max_cosine_to_base": 0.3}]
    assert [r["feature"] for r in most_novel(new, 2, 2)] == [9, 4]  # ties: lower feature index first
    assert [r["feature"] for r in most_novel(new, 2, 10)] == [9, 4, 5] and most_novel(new, 7, 3) == []
