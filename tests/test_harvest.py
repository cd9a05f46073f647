import json
import shutil

import numpy as np
import pytest
import torch

import rlhf_lens.store as store_module
from conftest import WORDS_NEG, WORDS_NEUTRAL, WORDS_POS, assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.harvest import HarvestConfig, harvest
from rlhf_lens.models import load_model, mlp_module, num_blocks
from rlhf_lens.store import ActivationStore

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def varied_corpus(tmp_path_factory):
    """Test documents from 1 to ~80 words, so batches need padding and some documents are truncated."""
    rng = np.random.RandomState(3)
    words = WORDS_POS + WORDS_NEG + WORDS_NEUTRAL
    rows = []
    for i in range(36):
        n_words = [1, 2, 80][i] if i < 3 else int(rng.randint(1, 60))
        rows.append({"text": " ".join(words[j] for j in rng.randint(0, len(words), n_words)), "split": "test"})
    rows.append({"text": "a train document that harvest must not see", "split": "train"})
    path = tmp_path_factory.mktemp("varied") / "varied.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(corpus, **kwargs) -> HarvestConfig:
    base = dict(layers=[0, 1, 2], corpus=str(corpus), max_tokens=MAX_TOKENS, batch_size=4, shard_tokens=150)
    return HarvestConfig(**{**base, **kwargs})


def _recomputed_mlp_outputs(model, ids: list[int]) -> list[torch.Tensor]:
    """MLP output of every block for one unpadded document, rebuilt from `output_hidden_states`."""
    x = torch.tensor([ids])
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states
        outputs = []
        for i, block in enumerate(model.base_model.layers):
            h = hidden[i]  # the input of block i
            if model.config.model_type == "gpt_neox":  # parallel residual: the MLP reads the block input
                outputs.append(block.mlp(block.post_attention_layernorm(h))[0])
                continue
            positions = model.base_model.rotary_emb(h, torch.arange(len(ids))[None])
            attn, _ = block.self_attn(block.input_layernorm(h), position_embeddings=positions, attention_mask=None)
            mid = h + attn
            mlp = block.mlp(block.post_attention_layernorm(mid))
            if i + 1 < len(model.base_model.layers):  # the rebuild itself must reproduce the next hidden state
                torch.testing.assert_close(mid + mlp, hidden[i + 1], atol=1e-5, rtol=1e-5)
            outputs.append(mlp[0])
    return outputs


def _rows_by_doc(store: ActivationStore, layer: int) -> dict[int, torch.Tensor]:
    rows: dict[int, list] = {}
    for shard in store.iter_shards(layer):
        for doc in shard.doc.unique().tolist():
            sel = shard.doc == doc
            assert torch.equal(shard.pos[sel], torch.arange(int(sel.sum()), dtype=torch.int32))
            rows[doc] = shard.acts[sel]
    return rows


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_harvest_equals_plain_forward(arch, tiny_model_dir, tiny_llama_dir, varied_corpus, tmp_path):
    model_dir = tiny_model_dir if arch == "gpt_neox" else tiny_llama_dir
    store = harvest(str(model_dir), _config(varied_corpus), tmp_path / "acts")
    model, tok = load_model(str(model_dir))
    texts = [json.loads(line)["text"] for line in varied_corpus.read_text().splitlines()][:36]
    token_lists = [tok(t, truncation=True, max_length=MAX_TOKENS)["input_ids"] for t in texts]
    lengths = [len(ids) for ids in token_lists]
    assert min(lengths) < 5 and max(lengths) == MAX_TOKENS  # padding and truncation both happen
    assert store.n_docs == 36 and store.n_tokens == sum(lengths)  # no padding row stored
    assert store.manifest["model_type"] == arch and len(store.manifest["shards"]) > 2
    expected = [_recomputed_mlp_outputs(model, ids) for ids in token_lists]
    for layer in store.layers:
        by_doc = _rows_by_doc(store, layer)
        for doc in range(len(token_lists)):
            torch.testing.assert_close(by_doc[doc], expected[doc][layer], atol=2e-5, rtol=1e-4)
    for doc in (0, 2, 17):
        assert store.document_tokens(doc).tolist() == token_lists[doc]


def test_killed_harvest_resumes_identically(tiny_model_dir, varied_corpus, tmp_path, monkeypatch):
    config = _config(varied_corpus, layers=[1, 2])
    whole = harvest(str(tiny_model_dir), config, tmp_path / "whole")
    n_shards = len(whole.manifest["shards"])
    assert n_shards >= 4

    model, tok = load_model(str(tiny_model_dir))
    real_save = store_module.save_safetensors
    written = []

    def save_then_die(path, tensors, metadata=None):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while working on the third shard
        real_save(path, tensors, metadata)
        written.append(path)

    monkeypatch.setattr(store_module, "save_safetensors", save_then_die)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        harvest(str(tiny_model_dir), config, out, model=model, tokenizer=tok)
    assert all(not mlp_module(model, i)._forward_hooks for i in range(num_blocks(model)))  # hooks removed
    partial = json.loads((out / "manifest.json").read_text())
    assert len(partial["shards"]) == 2 and not partial["complete"]
    with pytest.raises(UserError, match="unfinished"):
        ActivationStore(out)
    assert ActivationStore(out, allow_incomplete=True).n_tokens == sum(s["n_tokens"] for s in partial["shards"])
    (out / ".shard-00002.safetensors.x1y2.tmp").write_bytes(b"half a shard")  # what a SIGKILL leaves

    monkeypatch.setattr(store_module, "save_safetensors", real_save)
    resumed = harvest(str(tiny_model_dir), config, out)
    assert resumed.manifest == whole.manifest
    for entry in whole.manifest["shards"]:
        assert (out / entry["file"]).read_bytes() == (whole.path / entry["file"]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.path.iterdir())


def test_damaged_shard_is_redone(tiny_model_dir, varied_corpus, tmp_path):
    config = _config(varied_corpus, layers=[2])
    whole = harvest(str(tiny_model_dir), config, tmp_path / "whole")
    damaged = tmp_path / "damaged"
    shutil.copytree(whole.path, damaged)
    shard = damaged / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"shard-00001.safetensors: .*rerun"):
        ActivationStore(damaged)
    harvest(str(tiny_model_dir), config, damaged)
    assert shard.read_bytes() == (whole.path / "shard-00001.safetensors").read_bytes()
    ActivationStore(damaged)


def test_bfloat16_storage(tiny_model_dir, varied_corpus, tmp_path):
    from safetensors import safe_open

    full = harvest(str(tiny_model_dir), _config(varied_corpus, layers=[1], max_docs=10), tmp_path / "f32")
    half = harvest(str(tiny_model_dir), _config(varied_corpus, layers=[1], max_docs=10, dtype="bfloat16"),
                   tmp_path / "bf16")
    with safe_open(str(half.path / "shard-00000.safetensors"), framework="pt") as f:
        assert f.get_slice("layer1").get_dtype() == "BF16"
    a = torch.cat([s.acts for s in full.iter_shards(1)])
    b = torch.cat([s.acts for s in half.iter_shards(1)])
    assert b.dtype == torch.float32 and half.n_docs == 10
    torch.testing.assert_close(b, a, atol=1e-2, rtol=1e-2)


def test_cli_harvest_and_bad_input(tiny_model_dir, varied_corpus, tmp_path):
    out = tmp_path / "acts"
    result = run_cli("harvest", tiny_model_dir, "--layers", "1,2", "--corpus", varied_corpus, "--out", out,
                     "--max-docs", "12", "--max-tokens", "32", "--batch-size", "5", check=True)
    assert "documents, layers 1,2" in result.stdout
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # another config into the same folder: refused, nothing touched
    assert_user_error(run_cli("harvest", tiny_model_dir, "--layers", "2", "--corpus", varied_corpus, "--out", out,
                              "--max-docs", "12", "--max-tokens", "32"), "other settings", "layers")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    absent = tmp_path / "never"
    assert_user_error(run_cli("harvest", tiny_model_dir, "--layers", "0,7", "--corpus", varied_corpus,
                              "--out", absent), "out of range")
    assert not absent.exists()
    assert_user_error(run_cli("harvest", tiny_model_dir, "--layers", "1", "--corpus", varied_corpus, "--out", absent,
                              "--max-tokens", "100000"), "context")
    assert_user_error(run_cli("harvest", tiny_model_dir, "--layers", "1", "--corpus", varied_corpus, "--out", absent,
                              "--dtype", "float8"), "dtype")
    assert not absent.exists()

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert_user_error(run_cli("harvest", tiny_model_dir, "--layers", "1", "--corpus", varied_corpus,
                              "--out", stranger), "not empty")
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]


def test_other_model_or_corpus_into_same_folder(tiny_model_dir, tiny_llama_dir, varied_corpus, corpus_file, tmp_path):
    out = tmp_path / "acts"
    harvest(str(tiny_model_dir), _config(varied_corpus, layers=[1], max_docs=6), out)
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="other settings"):
        harvest(str(tiny_llama_dir), _config(varied_corpus, layers=[1], max_docs=6), out)
    with pytest.raises(UserError, match="corpus"):
        harvest(str(tiny_model_dir), _config(corpus_file, layers=[1], max_docs=6), out)
    # same path, retrained weights: the fingerprint tells them apart
    model, tok = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.mul_(1.001)
    with pytest.raises(UserError, match="weights differ"):
        harvest(str(tiny_model_dir), _config(varied_corpus, layers=[1], max_docs=6), out, model=model, tokenizer=tok)
    assert (out / "manifest.json").read_bytes() == manifest
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        harvest(str(tiny_model_dir), _config(varied_corpus, layers=[1], max_docs=6), out)
    assert (out / "manifest.json").read_text() == "{not json"
