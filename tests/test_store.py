import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lens.errors import UserError
from rlhf_lens.harvest import HarvestConfig, harvest
from rlhf_lens.models import load_tokenizer
from rlhf_lens.store import ActivationStore


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir, corpus_file) -> ActivationStore:
    """Layers 1 and 2 of the tiny GPT-NeoX over the 40 test reviews, in shards of ~300 tokens."""
    config = HarvestConfig(layers=[1, 2], corpus=str(corpus_file), max_tokens=32, batch_size=8, shard_tokens=300)
    return harvest(str(tiny_model_dir), config, tmp_path_factory.mktemp("store") / "acts")


@pytest.fixture
def copy(store, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(store.path, tmp_path / "copy")


def _all_rows(store: ActivationStore, layer: int) -> torch.Tensor:
    return torch.cat([shard.acts for shard in store.iter_shards(layer)])


def test_layout_is_plain_safetensors(store):
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["layers"] == [1, 2] and manifest["d"] == 32 and manifest["n_docs"] == 40
    total = 0
    for entry in manifest["shards"]:
        tensors = load_file(str(store.path / entry["file"]))
        n = entry["n_tokens"]
        assert set(tensors) == {"layer1", "layer2", "token_ids", "doc", "pos"}
        assert tensors["layer1"].shape == (n, 32) and tensors["layer1"].dtype == torch.float32
        assert (tensors["token_ids"].dtype, tensors["doc"].dtype, tensors["pos"].dtype) == \
            (torch.int32, torch.int64, torch.int32)
        assert tensors["doc"].min() >= entry["doc_start"] and tensors["doc"].max() < entry["doc_end"]
        key = tensors["doc"] * 1000 + tensors["pos"]
        assert torch.all(key[1:] > key[:-1])  # ordered by (doc, pos)
        total += n
    assert total == manifest["n_tokens"] == store.n_tokens
    assert len(manifest["shards"]) >= 4


def test_batches_cover_each_row_once_and_are_seeded(store):
    source = store.source(2, window_shards=2)
    assert (source.d, source.n) == (32, store.n_tokens)
    batches = list(source.batches(64, seed=0, epoch=0))
    assert all(len(b) == 64 for b in batches[:-1]) and 0 < len(batches[-1]) <= 64
    assert all(b.dtype == torch.float32 and b.shape[1] == 32 for b in batches)
    seen = torch.cat(batches)
    expected = _all_rows(store, 2)
    assert seen.shape == expected.shape
    # the same multiset of rows: sort both by a row key
    key = torch.randn(32)
    torch.testing.assert_close(seen[torch.argsort(seen @ key)], expected[torch.argsort(expected @ key)], rtol=0, atol=0)
    again = torch.cat(list(source.batches(64, seed=0, epoch=0)))
    assert torch.equal(seen, again)
    assert not torch.equal(seen, torch.cat(list(source.batches(64, seed=0, epoch=1))))
    assert not torch.equal(seen, torch.cat(list(source.batches(64, seed=1, epoch=0))))
    assert not torch.equal(seen[:200], expected[:200])  # shuffled, not in store order


def test_batches_read_a_window_of_shards_at_a_time(store, monkeypatch):
    source = store.source(1, window_shards=2)
    reads = []
    real_read = ActivationStore._read

    def counting_read(self, k, keys):
        reads.append(k)
        return real_read(self, k, keys)

    monkeypatch.setattr(ActivationStore, "_read", counting_read)
    iterator = source.batches(16, seed=3, epoch=0)
    next(iterator)
    assert len(reads) == 2  # the first batch needed only the first window
    list(iterator)
    assert sorted(reads) == list(range(len(store.manifest["shards"])))


def test_document_tokens_and_iter_shards(store, corpus_file):
    from rlhf_lens.data import load_corpus

    tok = load_tokenizer(store.manifest["tokenizer"])
    texts = load_corpus(str(corpus_file)).texts("test")
    for doc in (0, 13, 39):
        assert store.document_tokens(doc).tolist() == tok(texts[doc], truncation=True, max_length=32)["input_ids"]
    shards = list(store.iter_shards(1))
    assert [s.index for s in shards] == list(range(len(shards)))
    assert torch.equal(torch.cat([s.doc for s in shards]).unique(), torch.arange(40))
    with pytest.raises(UserError, match="documents 0..39"):
        store.document_tokens(40)
    with pytest.raises(UserError, match=r"layer 0 is not in the store.*\[1, 2\]"):
        store.source(0)


def test_garbage_shard_header(copy):
    shard = copy / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"x" * 32
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"shard-00002.safetensors: corrupt or truncated.*rerun"):
        ActivationStore(copy)
    assert shard.read_bytes() == bytes(data)  # a reader never rewrites


def test_truncated_and_missing_shards(copy):
    shard = copy / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(UserError, match=r"shard-00001.safetensors: .*truncated"):
        ActivationStore(copy)
    shard.unlink()
    with pytest.raises(UserError, match=r"shard-00001.safetensors: missing"):
        ActivationStore(copy)


def test_manifest_that_does_not_match_its_shards(copy):
    original = json.loads((copy / "manifest.json").read_text())

    def broken(edit) -> None:
        manifest = json.loads(json.dumps(original))
        edit(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))

    broken(lambda m: m.update(d=64))
    with pytest.raises(UserError, match=r"shard-00000.safetensors: layer1 is F32 \[\d+, 32\].*expects F32 \[\d+, 64\]"):
        ActivationStore(copy)
    broken(lambda m: m.update(layers=[1, 2, 3]))
    with pytest.raises(UserError, match="manifest expects"):
        ActivationStore(copy)

    def shift_tokens(m):
        m["shards"][0]["n_tokens"] += 1
        m["shards"][0].pop("bytes")
        m["n_tokens"] += 1

    broken(shift_tokens)
    with pytest.raises(UserError, match="shard-00000.safetensors"):
        ActivationStore(copy)
    broken(lambda m: m.update(n_tokens=m["n_tokens"] + 5))
    with pytest.raises(UserError, match="totals do not match"):
        ActivationStore(copy)
    def drop_last_shard(m):
        m["n_tokens"] -= m["shards"].pop()["n_tokens"]

    broken(drop_last_shard)
    with pytest.raises(UserError, match="says complete"):
        ActivationStore(copy)
    broken(lambda m: m.update(format="something else"))
    with pytest.raises(UserError, match="not an rlhf-lens activation manifest"):
        ActivationStore(copy)


def test_not_a_store(tmp_path):
    with pytest.raises(UserError, match="run `rlhf-lens harvest` first"):
        ActivationStore(tmp_path)


def test_sae_batches_shuffle_the_whole_store_so_corpus_order_cannot_bias_them(store):
    """A store is in corpus order, and a corpus may be sorted by label: a batch must mix documents from the
    whole store, not from a few neighbouring shards (which a window of one shard would give)."""
    docs_of = {}
    for shard in store.iter_shards(2):
        for row, doc in zip(shard.acts, shard.doc):
            docs_of[row.numpy().tobytes()] = int(doc)
    assert len(store.manifest["shards"]) >= 4

    def first_batch_docs(source) -> set[int]:
        batch = next(iter(source.batches(48, seed=0, epoch=0)))
        return {docs_of[row.numpy().tobytes()] for row in batch}

    whole = first_batch_docs(store.source(2))
    assert min(whole) < store.n_docs // 4 and max(whole) >= 3 * store.n_docs // 4
    one_shard = first_batch_docs(store.source(2, window_shards=1))
    assert max(one_shard) - min(one_shard) < store.n_docs // 2  # what windows of shards did


def test_store_writer_writes_what_the_reader_reads(tmp_path):
    """The one writer of the format: format and version first, the given fields in order, the totals last; a
    checkpointed store is unfinished until `finish`; a shard that does not follow the last one is refused."""
    from rlhf_lens.store import StoreWriter, index_tensors

    docs = [[5, 7, 9], [], [11, 2], [4]]
    acts = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 4)
    writer = StoreWriter(tmp_path / "s", {"model": "m", "tokenizer": "t", "corpus": "c", "split": "test",
                                          "layers": [3], "d": 4, "dtype": "bfloat16", "n_docs": 4})
    writer.add_shard({3: acts[:3]}, index_tensors(docs[:2]), 0, 2)
    writer.save()
    with pytest.raises(UserError, match="unfinished"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(ValueError, match="expected 2"):
        writer.add_shard({3: acts[3:]}, index_tensors(docs[2:], 2), 1, 4)
    writer.add_shard({3: acts[3:]}, index_tensors(docs[2:], 2), 2, 4)
    store = writer.finish()
    assert list(store.manifest) == ["format", "version", "model", "tokenizer", "corpus", "split", "layers", "d",
                                    "dtype", "n_docs", "n_tokens", "complete", "shards"]
    assert store.n_tokens == 6 and [e["n_tokens"] for e in store.manifest["shards"]] == [3, 3]
    assert store.document_tokens(2).tolist() == [11, 2] and store.document_tokens(1).tolist() == []
    second = store.read_shard(1, 3)
    assert second.doc.tolist() == [2, 2, 3] and second.pos.tolist() == [0, 1, 0]
    assert torch.equal(second.acts, acts[3:])
    assert load_file(str(store.path / "shard-00001.safetensors"))["layer3"].dtype == torch.bfloat16  # the manifest's


def test_store_problem_names_what_opening_would_refuse_without_raising(store, copy):
    """`store_problem` (what `rlhf-lens run` checks before it skips a finished harvest) finds what opening the store
    finds, phrased without advice; `manifest_problem` only what stops the store from being resumed."""
    from rlhf_lens.store import manifest_problem, store_problem

    assert store_problem(store.path) is None and manifest_problem(store.path) is None
    shard = copy / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"x" * 32
    shard.write_bytes(bytes(data))
    problem = store_problem(copy)
    assert problem.startswith(f"{shard}: corrupt or truncated") and "rerun" not in problem
    assert manifest_problem(copy) is None  # a damaged shard: the harvest redoes it in place
    # Opening it says how to redo it, whichever command wrote it.
    with pytest.raises(UserError, match=r"rlhf-lens harvest.*rlhf-lens run"):
        ActivationStore(copy)
    (copy / "manifest.json").write_text('{"format": "rlhf-lens.activations", "version": 1, "shards": "x"}')
    assert "manifest.json lacks" in store_problem(copy) and manifest_problem(copy) == store_problem(copy)
    (copy / "manifest.json").write_text(json.dumps({**store.manifest, "shards": [1, 2]}))
    assert manifest_problem(copy) == f"{copy / 'manifest.json'} is damaged"
    (copy / "manifest.json").unlink()
    assert store_problem(copy) == f"{copy / 'manifest.json'} is missing"


def test_a_store_resumes_when_its_model_moved_with_the_same_weights(store, tmp_path, tiny_model_dir, corpus_file):
    """A moved or copied run folder: its model is at a new path with the same weights (its tokenizer beside them).
    Harvesting into the store again redoes a damaged shard, byte for byte, and records where the model is now."""
    model = shutil.copytree(tiny_model_dir, tmp_path / "moved-model")
    acts = shutil.copytree(store.path, tmp_path / "acts")
    shard = acts / "shard-00002.safetensors"
    original = shard.read_bytes()
    shard.write_bytes(original[:50])
    config = HarvestConfig(layers=[1, 2], corpus=str(corpus_file), max_tokens=32, batch_size=8, shard_tokens=300)
    redone = harvest(str(model), config, acts)
    assert shard.read_bytes() == original
    assert redone.manifest["model"] == redone.manifest["tokenizer"] == str(model.resolve())
    assert {k: v for k, v in redone.manifest.items() if k not in ("model", "tokenizer")} == \
        {k: v for k, v in store.manifest.items() if k not in ("model", "tokenizer")}
    # other weights at the new path are still another model
    from rlhf_lens.models import load_model, save_model

    other, tokenizer = load_model(str(model))
    with torch.no_grad():
        other.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.mul_(1.001)
    save_model(other, tokenizer, model)
    with pytest.raises(UserError, match="other settings"):
        harvest(str(model), config, acts)
