"""The architecture registry (`rlhf_lens.sae.archs`): its names are the config's, each architecture writes the
files SAELens expects of it, and the selection rules shared with the crosscoder do what they say."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlhf_lens.errors import UserError
from rlhf_lens.sae import ARCHS, SAEConfig, SparseAutoencoder
from rlhf_lens.sae.archs import ARCHITECTURES, batch_topk, jumprelu, topk_codes

SAELENS_NAMES = {"tied": "standard", "untied": "standard", "topk": "topk", "batchtopk": "jumprelu"}


def test_the_registry_holds_exactly_the_config_names():
    """sae/config.py names the architectures without importing torch; the registry must agree, in order."""
    assert tuple(ARCHITECTURES) == ARCHS
    assert all(arch.name == name for name, arch in ARCHITECTURES.items())


@pytest.mark.parametrize("name", ARCHS)
def test_the_config_rules_agree_with_the_registry(name):
    """SAEConfig asks for --k and drops the L1 term exactly for the architectures that keep codes by rank."""
    arch = ARCHITECTURES[name]
    assert SAEConfig(arch=name).codes_by_rank == arch.codes_by_rank
    without_k = SAEConfig(d_in=4, dict_size=8, arch=name)
    if arch.codes_by_rank:
        with pytest.raises(UserError):
            without_k.check()
    else:
        without_k.check()


@pytest.mark.parametrize("name", ARCHS)
def test_each_architecture_saves_as_saelens_expects_and_loads_back(name, tmp_path):
    cfg = SAEConfig(d_in=6, dict_size=10, arch=name, k=3 if ARCHITECTURES[name].codes_by_rank else None, seed=1)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        if name == "batchtopk":
            sae.threshold.fill_(0.3)
    sae.save(tmp_path / name)
    raw = json.loads((tmp_path / name / "cfg.json").read_text())
    weights = load_file(str(tmp_path / name / "sae_weights.safetensors"))
    assert raw["architecture"] == SAELENS_NAMES[name]
    assert ("k" in raw) == (name == "topk") and raw.get("k") == (3 if name == "topk" else None)
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if name == "batchtopk" else set())
    assert (sae.encoder is None) == (name == "tied")
    loaded = SparseAutoencoder.load(tmp_path / name)
    assert loaded.cfg.arch == name
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(x)[1], sae(x)[1])


def test_a_foreign_folder_loads_only_as_a_readable_architecture(tmp_path):
    d, m = 4, 6
    w_dec = torch.randn(m, d, generator=torch.Generator().manual_seed(3)) * 2  # rows not unit-norm
    tensors = {"W_enc": torch.randn(d, m), "b_enc": torch.zeros(m), "W_dec": w_dec, "b_dec": torch.zeros(d)}
    for architecture in ("standard", "topk", "jumprelu"):
        folder = tmp_path / architecture
        folder.mkdir()
        save_file(tensors, str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({"architecture": architecture, "d_in": d, "d_sae": m, "k": 2}))
    assert SparseAutoencoder.load(tmp_path / "standard").cfg.arch == "untied"
    with pytest.raises(UserError, match="TopK SAE without unit-norm decoder rows"):
        SparseAutoencoder.load(tmp_path / "topk")  # which codes are kept depends on their scale
    with pytest.raises(UserError, match=r"architecture 'jumprelu' is not supported \(standard or topk\)"):
        SparseAutoencoder.load(tmp_path / "jumprelu")


def test_topk_codes_keep_the_k_best_scores_of_each_row():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-2.0, -3.0, 1.0, -1.0]])
    assert topk_codes(pre, 2).tolist() == [[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 1.0, 0.0]]  # then ReLU
    score = torch.tensor([[0.0, 5.0, 1.0, 4.0], [1.0, 0.0, 0.0, 2.0]])  # chooses the entries, pre gives the values
    assert topk_codes(pre, 2, score).tolist() == [[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]


def test_batch_topk_keeps_k_per_row_on_average_and_jumprelu_cuts_at_the_threshold():
    score = torch.tensor([[9.0, 8.0, 7.0], [1.0, 0.5, 6.0]])
    vals, pos = batch_topk(score, 2)  # 2 * 2 rows = 4 over the batch: the first row gets 3
    assert vals.tolist() == [9.0, 8.0, 7.0, 6.0] and sorted(pos.tolist()) == [0, 1, 2, 5]
    assert batch_topk(score, 5)[0].numel() == 6  # never more than the batch holds
    acts = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert jumprelu(acts, torch.tensor(2.5)).tolist() == [[0.0, 0.0], [3.0, 4.0]]
    assert jumprelu(acts, torch.tensor(0.5), score=torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist() == \
        [[1.0, 0.0], [0.0, 4.0]]
