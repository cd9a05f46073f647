"""interp CLI: `rlhf-lens explain` and `rlhf-lens utility-score` on a tiny model, real SAEs and a real store."""

from __future__ import annotations

import json
import socket

import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.interp import explanation_utility, normalise
from rlhf_lens.rewards import load_utility_table

LAYER = 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, corpus_file):
    """An activation store of the tiny model's block 1 and two SAEs (m = d and m = 2d) trained on it."""
    from rlhf_lens.harvest import HarvestConfig, harvest
    from rlhf_lens.sae import SAEConfig, SparseAutoencoder, train_saes

    root = tmp_path_factory.mktemp("interp-cli")
    store = harvest(str(tiny_model_dir), HarvestConfig(layers=[LAYER], corpus=str(corpus_file), max_tokens=50),
                    root / "acts")
    small, large = root / "sae-32", root / "sae-64"
    train_saes(store.source(LAYER), [SAEConfig(d_in=32, dict_size=32, epochs=2, batch_size=64),
                                     SAEConfig(d_in=32, dict_size=64, epochs=2, batch_size=64)], [small, large],
               quiet=True)
    narrow = root / "sae-d16"
    SparseAutoencoder(SAEConfig(d_in=16, dict_size=16)).save(narrow)
    return {"root": root, "store": root / "acts", "small": small, "large": large, "narrow": narrow,
            "model": tiny_model_dir, "corpus": corpus_file}


def test_explain_top_k_from_a_store_then_utility_score(setup, tmp_path):
    from rlhf_lens.dictionaries import top_features
    from rlhf_lens.sae import SparseAutoencoder

    out = tmp_path / "features.json"
    args = ["explain", setup["small"], "--model", setup["model"], "--layer", LAYER, "--acts", setup["store"],
            "--top-k", 3, "--mmcs-with", setup["large"], "--label", "base", "--out", out]
    result = run_cli(*args, check=True)
    assert "3 features explained (offline)" in result.stdout
    records = json.loads(out.read_text())
    expected = top_features(SparseAutoencoder.load(setup["small"]).dictionary,
                            SparseAutoencoder.load(setup["large"]).dictionary, 3)
    assert [r["feature"] for r in records] == [e["feature"] for e in expected]
    table = load_utility_table("vader")
    for record, top in zip(records, expected):
        assert record["max_cosine"] == pytest.approx(top["max_cosine"])
        assert record["model"] == "base" and record["layer"] == LAYER and record["explainer"] == "offline"
        assert record["sae"] == str(setup["small"])
        assert len(record["examples"]) == 5 and len(record["scoring_examples"]) == 10
        shown = [e["values"] for e in record["examples"]]
        assert [e["activations"] for e in record["examples"]] == normalise(shown)
        assert all(len(e["tokens"]) == len(e["activations"]) <= 50 for e in record["examples"])
        assert -1.0 <= record["score"] <= 1.0
        assert record["utility"] == pytest.approx(explanation_utility(record["explanation"], table)[0])
        for key in ("reward_corr", "positive_share", "negative_share", "sign_share"):
            assert isinstance(record[key], float)
    # deterministic: the same command writes the same file
    first = out.read_text()
    run_cli(*args, check=True)
    assert out.read_text() == first

    text = run_cli("utility-score", out, out, check=True).stdout
    assert "utility score" in text and "total" in text
    summed = run_cli("utility-score", out, out, "--json", "--aggregate", "sum", check=True).stdout
    result = json.loads(summed)
    by_hand = sum(explanation_utility(r["explanation"], table, "sum")[0] for r in records)
    assert result["total"]["base"]["utility"] == pytest.approx(by_hand)
    assert result["total"]["tuned"]["utility"] == pytest.approx(by_hand)
    assert result["blocks"][0]["layer"] == LAYER and result["total"]["base"]["n_features"] == 3


def test_explain_harvests_a_corpus_into_the_cache(setup, tmp_path):
    out = tmp_path / "features.json"
    run_cli("explain", setup["small"], "--model", setup["model"], "--layer", LAYER, "--corpus", setup["corpus"],
            "--max-docs", 12, "--features", "0,5", "--n-top", 2, "--n-holdout", 1, "--n-random", 1, "--out", out,
            check=True)
    records = json.loads(out.read_text())
    assert [r["feature"] for r in records] == [0, 5] and all(r["max_cosine"] is None for r in records)
    assert all(len(r["examples"]) == 2 and len(r["scoring_examples"]) == 2 for r in records)
    assert {e["doc"] for r in records for e in r["examples"] + r["scoring_examples"]} <= set(range(12))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input(setup, tmp_path):
    out = tmp_path / "features.json"
    out.write_text("[]\n")  # an earlier result that a failed run must leave alone
    common = ["--model", setup["model"], "--layer", LAYER, "--acts", setup["store"], "--out", out]

    assert_user_error(run_cli("explain", setup["narrow"], *common, "--features", "0"),
                      "expects activations of width 16 but layer 1 has width 32")
    assert_user_error(run_cli("explain", setup["small"], *common, "--features", "0", "--explainer", "gpt5"),
                      "unknown --explainer 'gpt5'")
    assert_user_error(run_cli("explain", setup["small"], *common, "--features", "3,32"),
                      "feature index 32 out of range", "0..31")
    assert_user_error(run_cli("explain", setup["small"], *common, "--top-k", "3"), "--mmcs-with")
    assert_user_error(run_cli("explain", setup["small"], "--model", setup["model"], "--layer", 0, "--acts",
                              setup["store"], "--out", out, "--features", "0"), "layer 0 is not in the store")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    assert_user_error(run_cli("explain", setup["small"], *common, "--features", "0", "--explainer", "openai",
                              "--base-url", url, "--retries", "1", "--timeout", "2"),
                      f"cannot connect to the explainer API at {url.split('/')[2]}", "--base-url")
    assert_user_error(run_cli("explain", setup["small"], *common, "--features", "0", "--diff", tmp_path / "nodiff"),
                      "--diff", "no diff.json there")
    assert_user_error(run_cli("explain", setup["small"], *common, "--features", "0", "--scorer", "detection | judge"),
                      "unknown --scorer 'judge'")
    assert out.read_text() == "[]\n"

    assert_user_error(run_cli("utility-score", tmp_path / "missing.json", out), "missing.json: no such file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    assert_user_error(run_cli("utility-score", bad, out), "expected a JSON list of feature records")
    bad.write_text('[{"layer": 1}]')
    assert_user_error(run_cli("utility-score", bad, out), "record 0 lacks feature, explanation, examples")
    assert_user_error(run_cli("utility-score", out, out, "--aggregate", "max"), "unknown --aggregate 'max'")
