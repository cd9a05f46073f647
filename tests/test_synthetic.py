"""Synthetic ground truth: the data's definition, the files, and `recovery` against a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_cli
from rlhf_lens.synthetic import SyntheticConfig, make_synthetic, recovery


def test_make_synthetic_is_sparse_superposition_and_deterministic():
    cfg = SyntheticConfig(d=12, features=30, sparsity=0.1, n=5000, seed=4)
    acts, truth = make_synthetic(cfg)
    assert acts.shape == (5000, 12) and truth.shape == (30, 12)
    torch.testing.assert_close(truth.norm(dim=1), torch.ones(30))
    # about F * S features on per row, each at Uniform(0, 1)
    mean_norm2 = float(acts.pow(2).sum(1).mean())
    # E||x||^2 = F*S*E[u^2] + cross terms; cross terms average ~0 for random directions
    assert mean_norm2 == pytest.approx(30 * 0.1 / 3, rel=0.2)
    again, truth2 = make_synthetic(cfg)
    assert torch.equal(acts, again) and torch.equal(truth, truth2)


def _direct_recovery(dic: np.ndarray, dic2: np.ndarray, truth: np.ndarray, threshold: float, k: int) -> dict:
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    dic, dic2, truth = norm(dic), norm(dic2), norm(truth)
    best = (truth @ dic.T).max(1)
    best2 = (truth @ dic2.T).max(1)
    pair = (dic @ dic2.T).max(1)
    top = np.argsort(-pair, kind="stable")[:k]
    real = (dic[top] @ truth.T).max(1) >= threshold
    return {"recovered": int((best >= threshold).sum()), "recovered2": int((best2 >= threshold).sum()),
            "gt_mmcs": best.mean(), "mmcs": pair.mean(), "top": top.tolist(), "real_fraction": real.mean()}


def test_recovery_equals_direct_computation():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(20, 8))
    # a dictionary with 7 noisy copies of true directions, and one with 12
    dic = np.vstack([truth[:7] + 0.1 * rng.normal(size=(7, 8)), rng.normal(size=(9, 8))])
    dic2 = np.vstack([truth[:12] + 0.2 * rng.normal(size=(12, 8)), rng.normal(size=(20, 8))])
    got = recovery(torch.tensor(dic), torch.tensor(truth), pair=torch.tensor(dic2), threshold=0.9, top_k=5)
    want = _direct_recovery(dic, dic2, truth, 0.9, 5)
    assert got["dictionary"]["recovered"] == want["recovered"]
    assert got["pair"]["recovered"] == want["recovered2"]
    assert got["dictionary"]["gt_mmcs"] == pytest.approx(want["gt_mmcs"], rel=1e-5)
    assert got["mmcs"] == pytest.approx(want["mmcs"], rel=1e-5)
    assert [r["feature"] for r in got["top_features"]] == want["top"]
    assert got["top_real_fraction"] == pytest.approx(want["real_fraction"])


def test_synthetic_and_recovery_cli(tmp_path):
    data = tmp_path / "syn.safetensors"
    run_cli("synthetic", "--out", data, "--d", "16", "--features", "32", "--sparsity", "0.05", "--n", "4096", "--seed", "1", check=True)
    tensors = load_file(str(data))
    assert tensors["activations"].shape == (4096, 16) and tensors["ground_truth"].shape == (32, 16)
    # both sizes in one pass: OUT/m{size}-s{seed}
    run_cli("train-sae", data, "--dict-size", "16,32", "--l1", "0.02", "--lr", "0.01", "--epochs", "1",
            "--out", tmp_path / "saes", check=True)
    small, large = tmp_path / "saes" / "m16-s0", tmp_path / "saes" / "m32-s0"
    report = json.loads(run_cli("recovery", small, data, "--with", large, "--json", check=True).stdout)
    direct = recovery(small, tensors["ground_truth"], pair=large)
    assert report["dictionary"]["recovered"] == direct["dictionary"]["recovered"]
    assert report["pair"]["recovered"] == direct["pair"]["recovered"]
    assert report["mmcs"] == pytest.approx(direct["mmcs"])
    assert len(report["top_features"]) == 10
    text = run_cli("recovery", small, data, check=True).stdout
    assert "true directions" in text
    assert_user_error(run_cli("recovery", small, small / "sae_weights.safetensors"), "no tensor 'ground_truth'")


def test_bad_synthetic_config():
    from rlhf_lens.errors import UserError

    with pytest.raises(UserError, match="--sparsity"):
        make_synthetic(SyntheticConfig(sparsity=2.0))
    with pytest.raises(UserError, match="--features"):
        make_synthetic(SyntheticConfig(features=0))
