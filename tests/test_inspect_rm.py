"""inspect_rm's core (docs/inspect_rm.md): the RM's states per prefix, the exact split of its score over an SAE,
the features' nulls (margin by sign flips, gold alignment by shuffled gold) and the policy's gain split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_lens.errors import UserError
from rlhf_lens.inspect_rm.config import InspectRMConfig, check_config
from rlhf_lens.inspect_rm.decompose import decompose_scores
from rlhf_lens.inspect_rm.features import classify, gold_alignment, margin, shuffled_counts
from rlhf_lens.inspect_rm.gain import gain_split
from rlhf_lens.inspect_rm.run import check_exact, held_out_pairs, train_rm_sae, verdict
from rlhf_lens.inspect_rm.states import last_rows, prefix_states, write_state_store
from rlhf_lens.rm.model import last_token_states, load_reward_model, score_head
from rlhf_lens.store import ActivationStore

TEXTS = ["the movie was good", "a plot", "the director of this film made a boring and sad story with music",
         "great fun", "indeed it was", "a long, long and winding review of a film that went on"]


@pytest.fixture(scope="module")
def rm(tiny_model_dir):
    """A tiny RM: the tiny GPT-NeoX with HF's fresh score head (its score is still a linear read of its state)."""
    torch.manual_seed(0)
    return load_reward_model(str(tiny_model_dir))


def test_prefix_states_are_the_states_the_head_reads_of_every_prefix(rm):
    model, tokenizer = rm
    states, ids = prefix_states(model, tokenizer, TEXTS, max_length=64, batch_size=4)
    assert [len(s) for s in states] == [len(i) for i in ids]
    torch.testing.assert_close(last_rows(states), last_token_states(model, tokenizer, TEXTS, 64), atol=1e-5, rtol=0)
    # row t of a text is the last-token state of its first t + 1 tokens
    prefix = tokenizer.decode(ids[2][:5])
    (again,), _ = prefix_states(model, tokenizer, [prefix], max_length=64)
    torch.testing.assert_close(states[2][4], again[-1], atol=1e-5, rtol=0)


def test_score_splits_exactly_over_the_sae(rm, tmp_path):
    model, tokenizer = rm
    texts = TEXTS * 8
    states, ids = prefix_states(model, tokenizer, texts, max_length=64)
    sae = train_rm_sae(states, tmp_path / "sae", InspectRMConfig(k=4, dict_ratio=2, sae_max_tokens=20_000))
    parts = decompose_scores(sae, score_head(model), last_rows(states))
    # features + error + constant is the RM's own forward score on every text (HF's head, not our states)
    assert check_exact(parts, model, tokenizer, texts, 64) < 1e-4
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits[0, 0].double()
    assert abs(float(parts.total()[0]) - float(logits)) <= 1e-4 * max(1.0, abs(float(logits)))
    # the error term is its own part: drop it and the sum misses exactly it
    torch.testing.assert_close(parts.scores - parts.contributions.sum(1) - parts.constant, parts.error,
                               atol=1e-4, rtol=0)
    assert (parts.contributions != 0).sum(1).float().mean() <= 4 * 3  # sparse codes
    store = ActivationStore(write_state_store(tmp_path / "store", states, ids, "rm", "rm", 4, "texts"))
    assert store.n_docs == len(texts) and store.layers == [4] and store.n_tokens == sum(len(s) for s in states)


def test_margin_and_gold_alignment_find_planted_features_and_hold_their_level():
    rng = np.random.default_rng(0)
    n, m = 200, 400
    gold = rng.normal(size=n)
    contributions = rng.normal(size=(n, m)) * (rng.random((n, m)) < 0.2)  # sparse noise features
    contributions[:, 0] = 0.8 * gold + rng.normal(scale=0.5, size=n)  # a gold feature
    alignment = gold_alignment(contributions, gold)
    assert alignment["q"][0] <= 0.05 and alignment["r"][0] > 0.5
    # null features: about the level's share of raw p below it, and BH names (almost) none
    assert abs(float((alignment["p"][1:] <= 0.05).mean()) - 0.05) < 0.03
    assert (alignment["q"][1:] <= 0.05).sum() <= 2
    chosen, rejected = rng.normal(size=(100, m)), rng.normal(size=(100, m))
    chosen[:, 1] += 1.0  # a feature the labels paid for
    margins = margin(chosen, rejected)
    assert margins["q"][1] <= 0.05 and (margins["q"][2:] <= 0.05).sum() <= 2
    classes = classify({"r": alignment["r"], "q": alignment["q"]}, margins, 0.05)
    assert classes[0] == "gold" and classes[1] == "cue" and classes.count("other") >= m - 6
    assert set(classes) <= {"gold", "anti-gold", "cue", "other"}
    # a constant column: no correlation, p = 1
    contributions[:, 5] = 3.0
    assert gold_alignment(contributions, gold)["p"][5] == 1.0
    # on its nulls (shuffled gold, randomly swapped sides) the procedure names about nothing
    counts = shuffled_counts(contributions[:100], gold[:100], chosen, rejected, 0.05, shuffles=10, seed=0)
    assert counts["shuffles"] == 10 and counts["gold_aligned"]["mean"] <= 1.5 and counts["margin"]["mean"] <= 1.5


def test_gain_split_sums_to_the_total_and_tests_each_part():
    rng = np.random.default_rng(3)
    prompts, m = 40, 6
    base = rng.normal(size=(prompts, m))
    tuned = base + rng.normal(scale=0.1, size=(prompts, m))
    tuned[:, 2] += 1.0  # the policy's gain rides on feature 2
    classes = ["gold", "other", "cue", "other", "anti-gold", "gold"]
    base_error, tuned_error = rng.normal(size=prompts), rng.normal(size=prompts)
    split = gain_split(tuned, base, tuned_error, base_error, classes, seed=0)
    parts = split["split"]
    assert abs(sum(p["mean"] for p in parts.values()) - split["total"]["mean"]) < 1e-9
    assert abs(sum(p["share"] for p in parts.values()) - 1.0) < 1e-9
    assert parts["cue"]["p"] <= 0.01 and parts["cue"]["share"] > 0.5
    assert int(np.argmax(split["per_feature"])) == 2
    features = [{"feature": 2, "class": "cue", "words": ["indeed"]}]
    result = verdict(split, {"cues": ["indeed"]}, features, 0.05)
    assert result["kind"] == "flaws" and "'indeed'" in result["text"] and "#2" in result["text"]
    # the same gain with no cue named by the insertion test: no flaw claim, but where the gain sits is said
    unnamed = verdict(split, {"cues": []}, features, 0.05)
    assert unnamed["kind"] == "undistinguishable" and "no cue" in unnamed["text"] and "#2" in unnamed["text"]
    # no gain: nothing to split, whatever the parts
    flat = gain_split(base, base, base_error, base_error, classes)
    assert verdict(flat, {"cues": []}, [], 0.05)["kind"] == "undistinguishable"


def test_held_out_pairs_come_from_the_rm_record_or_a_seeded_fifth():
    items = list(range(50))
    assert held_out_pairs(items, {"split": {"test": [3, 7, 9]}}, 0) == [3, 7, 9]
    fifth = held_out_pairs(items, {}, 0)
    assert len(fifth) == 10 and fifth == held_out_pairs(items, {"split": {"test": [99]}}, 0)


def test_bad_settings_name_the_key():
    with pytest.raises(UserError, match="templates"):
        check_config(InspectRMConfig(templates=[" "]))
    with pytest.raises(UserError, match="random_words"):
        check_config(InspectRMConfig(random_words=1))
