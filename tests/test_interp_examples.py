"""interp: example selection from a hand-made activation store (two shards, known activations)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from rlhf_lens.errors import UserError
from rlhf_lens.interp import ExampleConfig, collect_examples, normalise
from rlhf_lens.interp.text import unit_counts
from rlhf_lens.sae import SAEConfig, SparseAutoencoder
from rlhf_lens.store import ActivationStore, StoreWriter

# Feature activations by hand: doc -> per-token rows of 3 features (an identity SAE reads their ReLU).
# Feature 0's document maxima over the first 3 tokens: d0 2, d1 5, d2 5, d3 0.5, d4 9, d5 0, d6 3, d7 1
# (d7 has 100 at position 3, beyond max_tokens=3: it must not count).
DOCS = {
    0: [[0, 1, 0], [2, 0, 0], [1, 0, 0], [0, 0, 0]],
    1: [[5, 0, 0], [0, 0, 0], [4, 0, 2]],
    2: [[1, 0, 0], [5, 0, 0]],
    3: [[0.5, 3, 0], [-2, 0, 0]],
    4: [[0, 0, 0], [9, 0, 1], [3, 0, 0], [7, 0, 0]],
    5: [[0, 7, 0], [0, 0, 0]],
    6: [[3, 0, 0], [0, 0, 0], [0, 0, 0]],
    7: [[1, 0, 0], [0, 0, 0], [0, 0, 0], [100, 0, 0]],
}
SHARDS = [(0, 4), (4, 8)]
D = 3


def identity_sae(d: int, order: list[int] | None = None) -> SparseAutoencoder:
    """The paper's tied SAE with dictionary rows = unit vectors: feature j is ReLU(activation column order[j])."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, dict_size=d))
    with torch.no_grad():
        sae.decoder.copy_(torch.eye(d)[order or list(range(d))])
    return sae.eval()


def write_store(folder, token_ids: dict[int, list[int]]) -> ActivationStore:
    """A complete activation store of DOCS (layer 2, the shards SHARDS), by `store.StoreWriter`."""
    writer = StoreWriter(folder, {"model": "hand", "tokenizer": "hand", "corpus": "hand", "split": "test",
                                  "layers": [2], "d": D, "dtype": "float32", "n_docs": len(DOCS)})
    for start, end in SHARDS:
        rows = [(doc, pos) for doc in range(start, end) for pos in range(len(DOCS[doc]))]
        writer.add_shard({2: torch.tensor([DOCS[doc][pos] for doc, pos in rows], dtype=torch.float32)},
                         {"token_ids": torch.tensor([token_ids[doc][pos] for doc, pos in rows]),
                          "doc": torch.tensor([doc for doc, _ in rows]), "pos": torch.tensor([pos for _, pos in rows])},
                         start, end)
    return writer.finish()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from rlhf_lens.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory, tokenizer):
    words = tokenizer(" the good film was great and bad", add_special_tokens=False)["input_ids"]
    ids = {doc: [words[(doc + pos) % len(words)] for pos in range(len(rows))] for doc, rows in DOCS.items()}
    return write_store(tmp_path_factory.mktemp("hand-store"), ids), ids


CONFIG = ExampleConfig(n_top=2, n_holdout=2, n_random=2, max_tokens=3, seed=0)


def test_top_and_holdout_documents_by_max_activation_in_the_first_tokens(hand_store, tokenizer):
    store, ids = hand_store
    examples = collect_examples(store, 2, {"id": identity_sae(D)}, {"id": [0, 1]}, tokenizer, CONFIG)
    f0 = examples.features[("id", 0)]
    # doc 4 (9) first; docs 1 and 2 tie at 5 (lower index first); doc 6 (3); doc 7's 100 is past max_tokens
    assert [r.doc for r in f0.top] == [4, 1]
    assert [r.doc for r in f0.holdout] == [2, 6]
    assert f0.top[0].values == [0.0, 9.0, 3.0]  # the first 3 tokens only
    assert f0.top[0].token_ids == ids[4][:3]
    assert f0.top[0].tokens == [tokenizer.decode([i]) for i in ids[4][:3]]
    tokens, acts = f0.shown()
    assert acts == normalise([[0.0, 9.0, 3.0], [5.0, 0.0, 4.0]]) == [[0, 10, 3], [5, 0, 4]]
    assert tokens == [f0.top[0].tokens, f0.top[1].tokens]
    f1 = examples.features[("id", 1)]
    assert [r.doc for r in f1.top + f1.holdout] == [5, 3, 0, 1]  # 7, 3, 1, then 0-valued docs by index
    assert f1.holdout[1].values == [0.0, 0.0, 0.0]


def test_random_documents_are_seeded_and_skip_the_top_ones(hand_store, tokenizer):
    store, _ = hand_store
    features = {"id": [0, 1, 2]}
    first = collect_examples(store, 2, {"id": identity_sae(D)}, features, tokenizer, CONFIG)
    again = collect_examples(store, 2, {"id": identity_sae(D)}, features, tokenizer, CONFIG)
    for key, item in first.features.items():
        chosen = {r.doc for r in item.top + item.holdout}
        docs = [r.doc for r in item.random]
        assert len(docs) == 2 and len(set(docs)) == 2 and not chosen & set(docs)
        assert docs == [r.doc for r in again.features[key].random]
        for r in item.random:
            expected = [max(0.0, float(row[key[1]])) for row in DOCS[r.doc][:3]]
            assert r.values == expected and r.kind == "random"
        assert item.scoring() == item.holdout + item.random
    other = collect_examples(store, 2, {"id": identity_sae(D)}, features, tokenizer,
                             ExampleConfig(n_top=1, n_holdout=0, n_random=6, max_tokens=3, seed=1))
    assert len(other.features[("id", 0)].random) == 6


def test_one_pass_serves_every_feature_of_every_sae(hand_store, tokenizer, monkeypatch):
    store, ids = hand_store
    reads = []
    original = store.read_shard
    monkeypatch.setattr(store, "read_shard", lambda k, layer: reads.append(k) or original(k, layer))
    examples = collect_examples(store, 2, {"a": identity_sae(D), "b": identity_sae(D, [2, 0, 1])},
                                {"a": [0, 1, 2], "b": [0, 2]}, tokenizer, CONFIG)
    assert reads == [0, 1]
    assert sorted(examples.features) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 2)]
    # SAE b's feature 2 is SAE a's feature 1 (activation column 1)
    b2, a1 = examples.features[("b", 2)], examples.features[("a", 1)]
    assert [(r.doc, r.values) for r in b2.top + b2.holdout] == [(r.doc, r.values) for r in a1.top + a1.holdout]
    # corpus statistics: units of each document's first max_tokens tokens, counted in the same pass
    expected = Counter()
    for doc in DOCS:
        expected.update(unit_counts("".join(tokenizer.decode([i]) for i in ids[doc][:3])))
    assert examples.corpus.counts == expected and examples.corpus.total == sum(expected.values()) > 0


def test_bad_input(hand_store, tokenizer):
    store, _ = hand_store
    with pytest.raises(UserError, match="width 4 but layer 2 has width 3"):
        collect_examples(store, 2, {"s": identity_sae(4)}, {"s": [0]}, tokenizer, CONFIG)
    with pytest.raises(UserError, match="feature index 3 out of range: SAE s has features 0..2"):
        collect_examples(store, 2, {"s": identity_sae(D)}, {"s": [0, 3]}, tokenizer, CONFIG)
    with pytest.raises(UserError, match="layer 1 is not in the store"):
        collect_examples(store, 1, {"s": identity_sae(D)}, {"s": [0]}, tokenizer, CONFIG)
    with pytest.raises(UserError, match="no features to explain"):
        collect_examples(store, 2, {"s": identity_sae(D)}, {"s": []}, tokenizer, CONFIG)


def test_a_failed_simulation_is_scored_and_counted_not_fatal(hand_store, tokenizer):
    """An explainer whose simulator fails on feature 1's records (None, as LLMExplainer returns after a second
    unparsable answer): the stage goes on, that feature scores a constant prediction (0) and counts its failures."""
    from rlhf_lens.interp import explain_features
    from rlhf_lens.interp.explainers import Capabilities, Explainer

    class Flaky(Explainer):
        name = "flaky"
        capabilities = Capabilities(deterministic=True, uses_llm=False, network=False, corpus_statistics=False,
                                    parallel=False)

        def explain_many(self, features, corpus=None):
            return [f"feature {label}" for label, _, _ in features]

        def simulate_many(self, jobs):
            return [[None if text == "feature 1" else [1.0] * len(tokens) for tokens in records]
                    for text, records in jobs]

    store, _ = hand_store
    records = explain_features(store, 2, {"a": identity_sae(D)}, {"a": [0, 1]}, tokenizer, Flaky(), CONFIG)
    by_feature = {r["feature"]: r for r in records}
    assert by_feature[1]["simulation_failures"] == len(by_feature[1]["scoring_examples"]) > 0
    assert by_feature[1]["score"] == 0.0
    assert by_feature[0]["simulation_failures"] == 0
