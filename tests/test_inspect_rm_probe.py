"""The feedback probe (inspect_rm/probe.py): pooled SAE codes as the harvest reads them, the random control, the
prompt-grouped folds, a planted target found and a shuffled one not, the run-level call, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import WORDS_NEUTRAL
from rlhf_lens.errors import UserError
from rlhf_lens.inspect_rm.probe import (
    CONTROL,
    classes,
    feedback_probe,
    pooled_codes,
    pooled_codes_at,
    probe_folds,
    probe_policy,
    random_dictionary,
)
from rlhf_lens.sae import SAEConfig, SparseAutoencoder

LAYER = 1
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from rlhf_lens.models import load_model

    return load_model(str(tiny_model_dir))


def _one_token_word(tokenizer) -> tuple[str, int]:
    """A neutral word that is one token after a space (so a feature can fire on exactly its token)."""
    for word in WORDS_NEUTRAL:
        ids = tokenizer(" " + word)["input_ids"]
        if len(ids) == 1 and len(word) >= 4:
            return word, ids[0]
    raise AssertionError("no neutral word of 4+ letters is one token in the tiny tokenizer")


def _texts(word: str, n_prompts: int = 40, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """Two texts per prompt of neutral words (never `word`); each holds `word` with probability 1/2 (seeded):
    (texts, their prompts, whether each holds the word)."""
    rng = np.random.default_rng(seed)
    pool = [w for w in WORDS_NEUTRAL if w != word]
    texts, groups, holds = [], [], []
    for _ in range(n_prompts):
        prompt = " ".join(rng.choice(pool, 4))
        for _ in range(2):
            rest = list(rng.choice(pool, 8))
            has = bool(rng.random() < 0.5)
            if has:
                rest.insert(int(rng.integers(0, 8)), word)
            texts.append(prompt + " " + " ".join(rest))
            groups.append(prompt)
            holds.append(has)
    return texts, groups, np.array(holds, dtype=np.float64)


def _harvested(tiny_model_dir, texts: list[str], tmp_path, max_tokens: int):
    """The real harvest of `texts` at LAYER (the test split of a .jsonl corpus; its one train row keeps the loader
    from holding out part of a one-split file): its rows, token ids and docs."""
    from rlhf_lens.harvest import HarvestConfig, harvest

    corpus = tmp_path / "texts.jsonl"
    rows = [{"text": t, "split": "test"} for t in texts] + [{"text": "unused", "split": "train"}]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    store = harvest(str(tiny_model_dir), HarvestConfig(layers=[LAYER], corpus=str(corpus), max_tokens=max_tokens,
                                                       shard_tokens=300), tmp_path / "acts")
    shards = list(store.iter_shards(LAYER))
    return (torch.cat([s.acts for s in shards]), torch.cat([s.token_ids for s in shards]).long(),
            torch.cat([s.doc for s in shards]))


@pytest.fixture(scope="module")
def planted(tiny_model_dir, tiny, tmp_path_factory):
    """Texts with a one-token word in about half of them, and a tied SAE whose feature 0 fires on that word's token
    (its row: a linear separator of the word's token rows from the rest; its bias: just below them); the other 15 rows
    are random."""
    model, tokenizer = tiny
    word, token = _one_token_word(tokenizer)
    texts, groups, holds = _texts(word)
    acts, token_ids, _ = _harvested(tiny_model_dir, texts, tmp_path_factory.mktemp("planted"), max_tokens=64)
    on = token_ids == token
    from sklearn.svm import LinearSVC

    separator = LinearSVC(C=10.0, max_iter=20000).fit(acts.numpy(), on.numpy())  # the word's token vs the rest
    direction = torch.tensor(separator.coef_[0], dtype=torch.float32)
    direction = direction / direction.norm()
    projection = acts @ direction
    sae = SparseAutoencoder(SAEConfig(d_in=acts.shape[1], dict_size=16, arch="tied", seed=3))
    with torch.no_grad():
        sae.decoder[0] = direction
        sae.b_enc[0] = -(float(projection[on].min()) - 1e-4)  # fires on every token of the word
        fires = sae.encode(acts)[:, 0] > 0
    assert bool(fires[on].all()) and float(fires[~on].float().mean()) < 0.01  # and on almost no other
    return texts, groups, holds, sae


def test_pooled_codes_equal_the_harvest_encoded_and_mean_pooled(tiny_model_dir, tiny, corpus_file, tmp_path):
    from rlhf_lens.data import load_corpus

    model, tokenizer = tiny
    texts = load_corpus(str(corpus_file)).texts("test", 12)
    acts, _, doc = _harvested(tiny_model_dir, texts, tmp_path, max_tokens=24)  # 24: the reviews are cut
    saes = {"tied": SparseAutoencoder(SAEConfig(d_in=acts.shape[1], dict_size=40, arch="tied", seed=1)),
            "topk": SparseAutoencoder(SAEConfig(d_in=acts.shape[1], dict_size=40, arch="topk", k=4, seed=2))}
    pooled = pooled_codes(model, tokenizer, LAYER, saes, texts, max_length=24, batch_size=5)
    assert set(pooled) == set(saes)
    counts = torch.bincount(doc, minlength=len(texts))
    assert int(counts.min()) == 24  # every review is cut at 24 tokens, as the harvest cuts it
    for name, sae in saes.items():
        with torch.no_grad():
            codes = sae.encode(acts).double()
        expected = torch.zeros(len(texts), 40, dtype=torch.float64).index_add_(0, doc, codes) / counts[:, None]
        assert pooled[name].shape == (len(texts), 40)
        np.testing.assert_allclose(pooled[name], expected.numpy(), rtol=1e-4, atol=1e-5)
        assert pooled[name].std(0).max() > 0  # the codes differ between texts
    # several blocks in one pass: the same codes as one block at a time
    other = {"deeper": SparseAutoencoder(SAEConfig(d_in=acts.shape[1], dict_size=12, arch="tied", seed=4))}
    both = pooled_codes_at(model, tokenizer, {LAYER: saes, 2: other}, texts, max_length=24, batch_size=5)
    alone = pooled_codes(model, tokenizer, 2, other, texts, max_length=24)
    assert set(both) == {"tied", "topk", "deeper"}
    for name in saes:
        np.testing.assert_allclose(both[name], pooled[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both["deeper"], alone["deeper"], rtol=1e-5, atol=1e-6)


def test_random_dictionary_keeps_shape_and_architecture_with_random_unit_rows():
    for arch, k in (("topk", 3), ("batchtopk", 3), ("tied", None)):
        sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=20, arch=arch, k=k, seed=0))
        with torch.no_grad():
            sae.b_enc.fill_(0.7)
            sae.b_dec.copy_(torch.arange(8.0))
            if sae.arch.learns_threshold:
                sae.threshold.fill_(0.25)
        control = random_dictionary(sae, seed=5)
        assert control.cfg == sae.cfg and type(control.arch) is type(sae.arch)
        rows = control.dictionary
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(20))
        assert float((rows - sae.dictionary).abs().max()) > 0.1
        torch.testing.assert_close(control.encoder_matrix(), rows)
        assert bool((control.b_enc == 0).all())
        torch.testing.assert_close(control.b_dec, sae.b_dec)
        if sae.arch.learns_threshold:
            torch.testing.assert_close(control.threshold, sae.threshold)
        torch.testing.assert_close(random_dictionary(sae, seed=5).dictionary, rows)  # seeded
        assert float((random_dictionary(sae, seed=6).dictionary - rows).abs().max()) > 0.1
        if arch == "topk":
            codes = control.encode(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)))
            assert int((codes > 0).sum(1).max()) <= 3  # TopK keeps its sparsity


def test_folds_never_share_a_text_or_a_prompt():
    rng = np.random.default_rng(0)
    groups = [f"prompt {i // 2}" if i < 60 else f"prompt {30 + (i - 60) // 3}" for i in range(90)]
    labels = classes(rng.normal(size=90))
    split = probe_folds(labels, groups, folds=5, seed=4)
    assert len(split) == 5
    tested = np.concatenate([test for _, test in split])
    assert sorted(tested.tolist()) == list(range(90))  # every text is scored once
    for train, test in split:
        assert not set(train) & set(test)
        assert len(train) + len(test) == 90
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        assert set(labels[train]) == {0, 1}
    again = probe_folds(labels, groups, folds=5, seed=4)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(split, again))
    other = probe_folds(labels, groups, folds=5, seed=5)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(split, other))


def test_classes_split_at_the_median_ties_below():
    assert classes(np.array([1.0, 2.0, 2.0, 3.0, 5.0])).tolist() == [0, 0, 0, 1, 1]
    assert classes(np.array([1.0, 1.0, 1.0, 0.0])).tolist() == [1, 1, 1, 0]  # two values: their own classes


def test_a_planted_feature_is_found_and_a_shuffled_target_is_not(tiny, planted):
    model, tokenizer = tiny
    texts, groups, holds, sae = planted
    codes = pooled_codes(model, tokenizer, LAYER, {"planted": sae}, texts)
    reward = holds  # the target: whether the text holds the word
    result = feedback_probe(codes, reward, groups, folds=5, seed=0, layers={"planted": LAYER}, target_name="reward")
    assert result["target"] == "reward above its median" and result["texts"] == len(texts) and result["folds"] == 5
    chance = result["chance"]
    assert chance == max(holds.mean(), 1 - holds.mean()) and chance < 0.65
    found = result["dictionaries"]["planted"]
    assert found["layer"] == LAYER and found["accuracy"] >= 0.85 and found["sd"] >= 0
    assert result["top_features"][0] == {"dictionary": "planted", "feature": 0,
                                         "weight": pytest.approx(result["top_features"][0]["weight"]),
                                         "explanation": None}
    assert result["top_features"][0]["weight"] > 0  # more of the word: more reward
    assert len(result["top_features"]) == 10
    shuffled = feedback_probe(codes, np.random.default_rng(2).permutation(reward), groups, folds=5, seed=0)
    assert abs(shuffled["dictionaries"]["planted"]["accuracy"] - shuffled["chance"]) < 0.15


def test_probe_policy_reads_each_dictionary_on_its_model_and_adds_the_control(tiny, tiny_llama_dir, planted,
                                                                              tmp_path):
    from rlhf_lens.models import load_model

    model, tokenizer = tiny
    other, _ = load_model(str(tiny_llama_dir))  # the same width and tokenizer: a stand-in base model
    texts, groups, holds, sae = planted
    sae.save(tmp_path / "tuned")
    SparseAutoencoder(SAEConfig(d_in=sae.cfg.d_in, dict_size=16, arch="topk", k=4, seed=9)).save(tmp_path / "base")
    dictionaries = {"tuned-l1": (LAYER, str(tmp_path / "tuned")), "base-l2": (2, str(tmp_path / "base"))}
    result = probe_policy(other, model, tokenizer, dictionaries, texts, groups, holds, folds=4, seed=0)
    assert result["target"] == "the RM's reward above its median"
    assert list(result["dictionaries"]) == ["tuned-l1", "base-l2", CONTROL]
    assert [result["dictionaries"][name]["layer"] for name in result["dictionaries"]] == [LAYER, 2, LAYER]
    assert result["dictionaries"]["tuned-l1"]["accuracy"] >= 0.85  # read on the tuned model, where it was planted
    assert result["top_features"][0]["dictionary"] == "tuned-l1" and result["top_features"][0]["feature"] == 0
    # the base dictionary was read on the base model: recompute its codes there and probe them alone
    base_codes = pooled_codes(other, tokenizer, 2, {"base-l2": SparseAutoencoder.load(tmp_path / "base")}, texts)
    alone = feedback_probe(base_codes, holds, groups, folds=4, seed=0)
    assert alone["dictionaries"]["base-l2"]["accuracy"] == result["dictionaries"]["base-l2"]["accuracy"]
    with pytest.raises(UserError, match="start with 'tuned' or 'base'"):
        probe_policy(other, model, tokenizer, {"mine": (LAYER, str(tmp_path / "tuned"))}, texts, groups, holds, 4, 0)
    with pytest.raises(UserError, match="at least one tuned"):
        probe_policy(other, model, tokenizer, {"base": (2, str(tmp_path / "base"))}, texts, groups, holds, 4, 0)


def _one_line_error(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def test_bad_input_is_one_line(tiny):
    model, tokenizer = tiny
    codes = {"a": np.random.default_rng(0).normal(size=(4, 3))}
    groups = ["p0", "p1", "p2", "p3"]
    assert "4 texts cannot make 5 folds" in _one_line_error(
        lambda: feedback_probe(codes, np.array([0.0, 1, 2, 3]), groups, folds=5, seed=0))
    assert "one class" in _one_line_error(
        lambda: feedback_probe(codes, np.ones(4), groups, folds=2, seed=0))
    assert "2 prompts cannot make 3 folds" in _one_line_error(
        lambda: feedback_probe(codes, np.array([0.0, 1, 2, 3]), ["p", "p", "q", "q"], folds=3, seed=0))
    assert "3 groups for 4 texts" in _one_line_error(
        lambda: feedback_probe(codes, np.array([0.0, 1, 2, 3]), groups[:3], folds=2, seed=0))
    assert "shape [4, 3] for 5 texts" in _one_line_error(
        lambda: feedback_probe(codes, np.arange(5.0), groups + ["p4"], folds=2, seed=0))
    assert "finite" in _one_line_error(
        lambda: feedback_probe(codes, np.array([0.0, np.nan, 2, 3]), groups, folds=2, seed=0))
    wide = SparseAutoencoder(SAEConfig(d_in=7, dict_size=8, arch="tied"))
    assert "width 7" in _one_line_error(lambda: pooled_codes(model, tokenizer, LAYER, {"w": wide}, ["a text"]))
    fits = SparseAutoencoder(SAEConfig(d_in=int(model.config.hidden_size), dict_size=8, arch="tied"))
    assert "text 1 has no tokens" in _one_line_error(
        lambda: pooled_codes(model, tokenizer, LAYER, {"f": fits}, ["a text", ""]))
    assert "out of range" in _one_line_error(lambda: pooled_codes(model, tokenizer, 9, {"f": fits}, ["a text"]))
    assert "two blocks" in _one_line_error(
        lambda: pooled_codes_at(model, tokenizer, {0: {"f": fits}, 1: {"f": fits}}, ["a text"]))
