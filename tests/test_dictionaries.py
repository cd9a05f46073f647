"""Dictionary comparison: max cosine, MMCS, top features, Hungarian matching, new features, the mmcs command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_user_error, run_cli
from rlhf_lens.dictionaries import (
    compare,
    hungarian_matching,
    max_cosine,
    max_cosine_any,
    mmcs,
    new_features,
    seed_null,
    top_features,
)
from rlhf_lens.errors import UserError


def _direct_max_cos(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = an @ bn.T
    return sims.max(1), sims.argmax(1)


def _sae_dir(path, w_dec: torch.Tensor):
    """A folder in SAELens's layout holding this decoder."""
    path.mkdir(parents=True)
    m, d = w_dec.shape
    save_file({"W_enc": w_dec.t().contiguous(), "b_enc": torch.zeros(m), "W_dec": w_dec.contiguous(),
               "b_dec": torch.zeros(d)}, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d, "d_sae": m}))
    return path


def test_max_cosine_and_mmcs_equal_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 8)) * 3, rng.normal(size=(35, 8))
    values, match = max_cosine(torch.tensor(a), torch.tensor(b), chunk=7)  # chunking must not matter
    want_v, want_j = _direct_max_cos(a, b)
    np.testing.assert_allclose(values.numpy(), want_v, rtol=1e-5)
    np.testing.assert_array_equal(match.numpy(), want_j)
    assert mmcs(torch.tensor(a), torch.tensor(b)) == pytest.approx(want_v.mean(), rel=1e-5)


def test_top_features_are_indices_of_the_first_dictionary():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(40, 6))
    a = rng.normal(size=(10, 6))
    a[3] = b[17] * 2.0  # an exact copy of a feature of b, scaled
    a[7] = b[5] + 0.01 * rng.normal(size=6)
    top = top_features(torch.tensor(a), torch.tensor(b), k=3)
    assert [t["feature"] for t in top[:2]] == [3, 7] and [t["match"] for t in top[:2]] == [17, 5]
    assert top[0]["max_cosine"] == pytest.approx(1.0, abs=1e-6)
    want_v, _ = _direct_max_cos(a, b)
    assert [t["feature"] for t in top] == list(np.argsort(-want_v, kind="stable")[:3])


def test_hungarian_matching_is_one_to_one_and_optimal():
    from itertools import permutations

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    pairs = hungarian_matching(torch.tensor(a), torch.tensor(b))
    assert sorted(p["match"] for p in pairs) == [0, 1, 2, 3]
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = an @ bn.T
    best = max(sum(sims[i, p[i]] for i in range(4)) for p in permutations(range(4)))
    assert sum(p["cosine"] for p in pairs) == pytest.approx(best, rel=1e-6)


def test_new_features_lists_tuned_features_without_base_counterpart():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 16))
    tuned = base[:10] + 0.05 * rng.normal(size=(10, 16))
    tuned = np.vstack([tuned, rng.normal(size=(2, 16))])  # two features RLHF "added"
    new = new_features(torch.tensor(tuned), torch.tensor(base), threshold=0.7)
    want_v, _ = _direct_max_cos(tuned, base)
    assert sorted(r["feature"] for r in new) == sorted(np.nonzero(want_v < 0.7)[0].tolist())
    assert {10, 11} <= {r["feature"] for r in new}
    assert [r["max_cosine"] for r in new] == sorted(r["max_cosine"] for r in new)


def test_max_cosine_any_searches_the_union_of_dictionaries():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(15, 8))
    others = [rng.normal(size=(10, 8)), rng.normal(size=(20, 8)), rng.normal(size=(7, 8))]
    values, which, match = max_cosine_any(torch.tensor(a), [torch.tensor(o) for o in others])
    want_v, want_j = _direct_max_cos(a, np.vstack(others))  # the union, rows of each dictionary in turn
    offsets = np.cumsum([0] + [len(o) for o in others])
    np.testing.assert_allclose(values.numpy(), want_v, rtol=1e-5)
    np.testing.assert_array_equal(offsets[which.numpy()] + match.numpy(), want_j)
    with pytest.raises(UserError, match="at least one"):
        max_cosine_any(torch.tensor(a), [])


def test_seed_null_is_the_first_seed_against_the_others():
    rng = np.random.default_rng(6)
    seeds = [torch.tensor(rng.normal(size=(12, 8))) for _ in range(3)]
    null = seed_null(seeds)
    assert null.shape == (12,)
    torch.testing.assert_close(null, max_cosine_any(seeds[0], seeds[1:])[0])
    np.testing.assert_allclose(null.numpy(), _direct_max_cos(seeds[0].numpy(), np.vstack(seeds[1:]))[0], rtol=1e-5)
    with pytest.raises(UserError, match="two seeds"):
        seed_null(seeds[:1])


def test_new_features_against_several_base_seeds():
    """A tuned feature that one base seed missed but another has is not new; rows name the matching dictionary."""
    rng = np.random.default_rng(7)
    truth = rng.normal(size=(20, 32))
    bases = [truth + 0.05 * rng.normal(size=truth.shape) for _ in range(2)]
    bases[0][4] = rng.normal(size=32)  # seed 0 missed direction 4
    tuned = np.vstack([truth + 0.05 * rng.normal(size=truth.shape), rng.normal(size=(2, 32))])
    only_first = new_features(torch.tensor(tuned), torch.tensor(bases[0]), threshold=0.7)
    both = new_features(torch.tensor(tuned), [torch.tensor(b) for b in bases], threshold=0.7)
    assert 4 in {r["feature"] for r in only_first} and "dictionary" not in only_first[0]
    assert {r["feature"] for r in both} == {20, 21}
    assert all(r["dictionary"] in (0, 1) for r in both)
    assert [r["max_cosine"] for r in both] == sorted(r["max_cosine"] for r in both)


def test_different_widths_raise():
    with pytest.raises(UserError, match="different widths"):
        mmcs(torch.randn(5, 8), torch.randn(5, 9))


def test_mmcs_cli_json_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    small = torch.tensor(rng.normal(size=(12, 8)), dtype=torch.float32)
    large = torch.tensor(rng.normal(size=(24, 8)), dtype=torch.float32)
    a, b = _sae_dir(tmp_path / "a", small), _sae_dir(tmp_path / "b", large)
    result = run_cli("mmcs", a, b, "--top-k", "4", "--json", "--hungarian", "--new-below", "0.5", check=True)
    data = json.loads(result.stdout)
    want_v, want_j = _direct_max_cos(small.double().numpy(), large.double().numpy())
    assert data["mmcs"] == pytest.approx(want_v.mean(), rel=1e-5)
    order = np.argsort(-want_v, kind="stable")[:4]
    assert [r["feature"] for r in data["top_features"]] == order.tolist()
    assert [r["match"] for r in data["top_features"]] == want_j[order].tolist()
    assert len(data["hungarian"]["pairs"]) == 12
    assert data["new_features"] == compare(a, b, new_below=0.5)["new_features"]
    text = run_cli("mmcs", a, b, check=True)
    assert "MMCS" in text.stdout
    wide = _sae_dir(tmp_path / "wide", torch.randn(12, 10))
    assert_user_error(run_cli("mmcs", a, wide), "different widths")
    assert_user_error(run_cli("mmcs", a, tmp_path / "nothing"), "not an SAE folder")


def _recording(folder: Path, **cfg) -> Path:
    """`folder`'s cfg.json with these fields added (what a trainer records about the SAE)."""
    path = folder / "cfg.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **cfg}))
    return folder


def test_mmcs_cli_refuses_saes_of_different_blocks_unless_allowed(tmp_path):
    """Each cfg.json records its block (train-sae and a run: metadata.layer; SAELens: hook_layer or hook_name)."""
    rng = np.random.default_rng(5)
    w = [torch.tensor(rng.normal(size=(12, 8)), dtype=torch.float32) for _ in range(4)]
    block1 = _recording(_sae_dir(tmp_path / "b1", w[0]), metadata={"layer": 1, "source": "acts"})
    block2 = _recording(_sae_dir(tmp_path / "b2", w[1]), metadata={"layer": 2, "source": "acts"})
    saelens2 = _recording(_sae_dir(tmp_path / "saelens2", w[2]), metadata={"hook_name": "blocks.2.hook_mlp_out"})
    unknown = _sae_dir(tmp_path / "unknown", w[3])
    assert_user_error(run_cli("mmcs", block1, block2), f"{block1} encodes block 1 and {block2} block 2",
                      "--allow-different-layers")
    assert_user_error(run_cli("mmcs", block1, saelens2, "--json"), "block 1", "block 2")
    assert_user_error(run_cli("mmcs", _recording(_sae_dir(tmp_path / "old", w[0]), hook_layer=3), block2),
                      "block 3", "block 2")
    allowed = run_cli("mmcs", block1, block2, "--json", "--allow-different-layers", check=True)
    assert json.loads(allowed.stdout)["mmcs"] == pytest.approx(compare(block1, block2)["mmcs"])
    assert "warning" in allowed.stderr and "block 1" in allowed.stderr
    for a, b in ((block2, saelens2), (block1, unknown)):  # the same block, or one that does not say: no word
        same = run_cli("mmcs", a, b, "--json", check=True)
        assert "mmcs" in json.loads(same.stdout) and "warning" not in same.stderr


def test_new_in_block_auto_threshold_flags_only_truly_new_directions():
    """Three base seeds are noisy copies of the same directions (seed 0 missed one); the tuned dictionary has
    closer copies of them plus three random directions. With the auto threshold exactly those three are new,
    about new_feature_quantile of base seed 0 falls below it against seeds 1 and 2 (the baseline), and the
    direction seed 0 missed is matched in another seed instead of counting as new.
    Leave-one-out: the tuned seed-0 dictionary faces base seeds 1 and 2, the same reference set as the null."""
    import numpy as np

    from rlhf_lens.dictionaries import new_in_block, seed_null

    rng = np.random.default_rng(0)
    d, m, k = 64, 48, 3
    truth = rng.normal(size=(m, d))
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)

    def noisy(noise: float) -> torch.Tensor:
        return torch.tensor(truth + noise * rng.normal(size=truth.shape) / np.sqrt(d), dtype=torch.float32)

    bases = {s: noisy(0.4) for s in (0, 1, 2)}
    bases[0][10] = torch.tensor(rng.normal(size=d), dtype=torch.float32)  # seed 0 missed direction 10
    tuned = noisy(0.1)
    tuned[m - k:] = torch.tensor(rng.normal(size=(k, d)), dtype=torch.float32)  # what "RLHF added"

    rows, block = new_in_block(tuned, bases, 0)
    assert sorted(r["feature"] for r in rows) == list(range(m - k, m))
    assert all(r["max_cosine_to_base"] < block["threshold"] and r["match_seed"] in bases
               for r in rows)
    assert block["threshold_source"] == "auto: 0.05 quantile of base seed 0 vs seeds 1, 2"
    assert block["found"] == k and block["tuned_n"] == m and block["base_seeds"] == [0, 1, 2]
    assert block["null"]["against"] == block["reference_seeds"] == [1, 2] and block["null"]["n"] == m
    # torch.quantile interpolates: the 0.05 quantile sits at rank 0.05 * (m - 1), so that many ranks fall below it.
    assert block["null"]["below"] == int(np.ceil(0.05 * (m - 1))) and block["null"]["p05"] == block["threshold"]
    # Against base seed 0 alone, direction 10 would look new; against every base seed it is not.
    alone, _ = new_in_block(tuned, {0: bases[0]}, 0, threshold=block["threshold"])
    assert 10 in {r["feature"] for r in alone}

    # A fixed threshold is used as set; the baseline is still counted against it.
    fixed_rows, fixed = new_in_block(tuned, bases, 0, threshold=0.9)
    assert fixed["threshold"] == 0.9 and fixed["threshold_source"] == "fixed 0.9 (interp.new_feature_threshold)"
    assert fixed["null"]["below"] == int((seed_null(list(bases.values())) < 0.9).sum())
    assert fixed["found"] == len(fixed_rows) and fixed["null"]["p05"] == block["null"]["p05"]
    one_rows, one = new_in_block(tuned, {0: bases[0]}, 0)
    assert (one["threshold"], one["threshold_source"], one["null"]) == (0.5, "fixed 0.5 (one seed: no null)", None)
    assert {r["match_seed"] for r in one_rows} <= {0}




def test_new_in_block_judges_an_unchanged_model_exactly_like_its_null():
    """A tuned dictionary identical to base seed 0 (tuning changed nothing) must find exactly as many "new"
    features as the null counts below the threshold: both face the same base seeds (leave-one-out). Matching it
    against all seeds, seed 0 included, would find none and bias the comparison toward "nothing new"."""
    import numpy as np

    from rlhf_lens.dictionaries import new_in_block

    rng = np.random.default_rng(1)
    truth = rng.normal(size=(40, 32))
    bases = {s: torch.tensor(truth + 0.5 * rng.normal(size=truth.shape) / np.sqrt(32), dtype=torch.float32)
             for s in (0, 1, 2)}
    _, auto = new_in_block(bases[0].clone(), bases, 0)
    for threshold in (0.0, auto["null"]["median"]):
        rows, block = new_in_block(bases[0].clone(), bases, 0, threshold=threshold)
        assert block["found"] == block["null"]["below"] == len(rows) > 0, block


def test_compare_run_saes_compares_small_with_large_and_each_model_with_the_base(tmp_path):
    """mmcs.json from SAE rows as a run records them: paths relative to `root`, recorded as given."""
    from rlhf_lens.dictionaries import compare_run_saes, new_in_block, small_and_large
    from rlhf_lens.sae import SparseAutoencoder

    torch.manual_seed(0)
    rows, weights = [], {}
    for model in ("base", "tuned"):
        for seed in (0, 1):
            for size in (16, 8):  # the larger first: small_and_large sorts by size
                rel = f"saes/{model}/layer2/m{size}-s{seed}"
                weights[rel] = torch.randn(size, 6)
                _sae_dir(tmp_path / rel, weights[rel])
                rows.append({"model": model, "layer": 2, "dict_size": size, "seed": seed, "dir": rel})
    small, large = small_and_large(rows, "tuned", 2, 1)
    assert (small["dir"], large["dir"]) == ("saes/tuned/layer2/m8-s1", "saes/tuned/layer2/m16-s1")

    result = compare_run_saes(rows, ["base", "tuned"], [2], [0, 1], top_k=3, root=tmp_path)
    for w in result["within"]:
        small, large = (weights[f"saes/{w['model']}/layer2/m{n}-s{w['seed']}"] for n in (8, 16))
        assert (w["small"], w["large"]) == (8, 16) and w["mmcs"] == pytest.approx(mmcs(small, large))
    assert [(t["model"], t["seed"], t["sae"]) for t in result["top"]] == [
        ("base", 0, "saes/base/layer2/m8-s0"), ("base", 1, "saes/base/layer2/m8-s1"),
        ("tuned", 0, "saes/tuned/layer2/m8-s0"), ("tuned", 1, "saes/tuned/layer2/m8-s1")]
    assert all(len(t["features"]) == 3 for t in result["top"])
    assert [(a["model"], a["against"], a["seed"]) for a in result["across"]] == [("tuned", "base", 0), ("tuned", "base", 1)]
    assert result["across"][1]["mmcs"] == pytest.approx(mmcs(weights["saes/tuned/layer2/m8-s1"],
                                                             weights["saes/base/layer2/m8-s1"]))
    def loaded(rel: str) -> torch.Tensor:  # as the run loads them
        return SparseAutoencoder.load(tmp_path / rel).dictionary

    want_rows, want_block = new_in_block(loaded("saes/tuned/layer2/m8-s0"),
                                         {s: loaded(f"saes/base/layer2/m8-s{s}") for s in (0, 1)}, 0)
    assert result["new"] == [{"layer": 2, **row} for row in want_rows]
    assert result["new_blocks"] == [{"layer": 2, **want_block, "tuned_seed": 0}]
