"""Sparse autoencoders: formulas, the hand-written backward, training, files, resume, calibration, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.sae import (
    SAEConfig,
    SparseAutoencoder,
    TensorSource,
    calibrate_l1,
    train_saes,
)
from rlhf_lens.sae.step import Stepper
from rlhf_lens.synthetic import SyntheticConfig, make_synthetic, recovery


@pytest.fixture(scope="module")
def small_acts(tmp_path_factory) -> Path:
    """A small synthetic activation file (d 16, 32 true features)."""
    path = tmp_path_factory.mktemp("acts") / "acts.safetensors"
    acts, truth = make_synthetic(SyntheticConfig(d=16, features=32, sparsity=0.05, n=2048, seed=5))
    save_file({"activations": acts, "ground_truth": truth}, str(path))
    return path


def _hand_made(arch: str) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=3, dict_size=4, arch=arch, k=2 if arch == "topk" else None)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.decoder.copy_(torch.tensor([[2.0, 0, 0], [0, 1, 1], [1, -1, 0.5], [0, 0, -3]]))
        if sae.encoder is not None:
            sae.encoder.copy_(torch.tensor([[1.0, 0.5, 0], [0, 2, 0], [-1, 0, 1], [0.3, 0.3, 0.3]]))
        sae.b_enc.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        sae.b_dec.copy_(torch.tensor([0.5, -0.5, 0.25]))
    return sae


@pytest.mark.parametrize("arch", ["tied", "untied", "topk"])
def test_forward_equals_formula(arch):
    sae = _hand_made(arch)
    x = np.array([[1.0, 2.0, -1.0], [0.5, -0.3, 2.0], [-1.0, -1.0, -1.0]])
    w = sae.decoder.detach().double().numpy()
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    enc = wn if arch == "tied" else sae.encoder.detach().double().numpy()
    pre = x @ enc.T + sae.b_enc.detach().double().numpy()
    f = np.maximum(pre, 0)
    if arch == "topk":  # keep the 2 largest pre-activations per row, then ReLU
        keep = np.argsort(-pre, axis=1)[:, :2]
        mask = np.zeros_like(pre, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        f = np.where(mask, f, 0.0)
    x_hat = f @ wn + sae.b_dec.detach().double().numpy()
    got_hat, got_f = sae(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(got_f.detach().numpy(), f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_hat.detach().numpy(), x_hat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sae.dictionary.numpy(), wn, rtol=1e-6, atol=1e-6)
    # the loss: MSE averaged over elements + l1 * mean over tokens of ||f||_1 (none for topk)
    l1 = 0.0 if arch == "topk" else sae.l1_used
    expected = ((x_hat - x) ** 2).mean() + l1 * np.abs(f).sum(1).mean()
    assert sae.loss(torch.tensor(x, dtype=torch.float32)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("arch", ["tied", "untied", "topk", "batchtopk"])
@pytest.mark.parametrize("sparse", [False, True])
def test_fast_gradients_equal_autograd(arch, sparse):
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=12, dict_size=30, arch=arch, k=4 if arch in ("topk", "batchtopk") else None, l1=0.02, seed=3)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():  # off the initial point: non-unit raw rows, biases, an encoder that differs
        sae.decoder.mul_(torch.rand(30, 1) + 0.5)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.1)
        if sae.encoder is not None:
            sae.encoder.add_(0.2 * torch.randn_like(sae.encoder))
    x = torch.randn(50, 12)
    stepper = Stepper(sae, cfg.l1, cfg.lr)
    sq, l1sum, counts = stepper.grads(x, sparse=sparse)
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    sae.loss(x, l1=cfg.l1).backward()
    f = sae.train_codes(x)  # batchtopk: the batch-level rule of training, not the inference threshold
    x_hat = sae.decode(f)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"{arch} {name}")
    assert float(sq) == pytest.approx(float((x_hat - x).pow(2).sum()), rel=1e-5)
    assert float(l1sum) == pytest.approx(float(f.sum()), rel=1e-5)
    assert torch.equal(counts, (f > 0).sum(0))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("sparse", [False, True])
def test_aux_k_gradients_equal_autograd(arch, sparse):
    """With dead latents, topk/batchtopk add the auxiliary-k loss; the hand-written gradients match autograd."""
    torch.manual_seed(1)
    cfg = SAEConfig(d_in=12, dict_size=30, arch=arch, k=3, seed=4)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.1)
        sae.encoder.add_(0.2 * torch.randn_like(sae.encoder))
    x = torch.randn(40, 12)
    for n_dead in (4, 20):  # fewer dead latents than d/2 (k_aux = #dead, scaled down) and more
        dead = torch.zeros(30, dtype=torch.bool)
        dead[torch.randperm(30)[:n_dead]] = True
        stepper = Stepper(sae, 0.0, 1e-3)
        stepper.grads(x, sparse=sparse, dead=dead)
        assert stepper.aux_sq > 0
        fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
        for p in sae.parameters():
            p.grad = None
        sae.loss(x, dead=dead).backward()
        for name, p in sae.named_parameters():
            torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"{arch} {name} {n_dead}")


def test_batchtopk_training_l0_threshold_and_files(small_acts, tmp_path):
    """BatchTopK keeps exactly k * b codes per training batch; its learned threshold gives about the same L0
    at inference; it saves as a SAELens JumpReLU SAE and loads back."""
    source = TensorSource(small_acts)
    cfg = SAEConfig(d_in=16, dict_size=32, arch="batchtopk", k=3, lr=1e-2, epochs=4, batch_size=128, seed=0)
    sae = train_saes(source, [cfg], [tmp_path / "btk"], quiet=True)[0]
    x = source.acts[:128]
    assert int((sae.train_codes(x) > 0).sum()) == 3 * 128  # L0 = k on a training batch (codes are positive)
    stepper = Stepper(sae, 0.0, 1e-3)
    _, _, counts = stepper.grads(x, sparse=True)
    assert int(counts.sum()) == 3 * 128
    assert abs(sae.metrics["mean_l0"] - 3) <= 0.5, sae.metrics["mean_l0"]  # the threshold at inference
    assert sae.metrics["threshold"] > 0
    cfg_json = json.loads((tmp_path / "btk" / "cfg.json").read_text())
    weights = load_file(str(tmp_path / "btk" / "sae_weights.safetensors"))
    assert cfg_json["architecture"] == "jumprelu" and weights["threshold"].shape == (32,)
    # SAELens's JumpReLU: f = ReLU(pre) * [pre > threshold], pre = x @ W_enc + b_enc (apply_b_dec_to_input false)
    pre = x @ weights["W_enc"] + weights["b_enc"]
    f = torch.relu(pre) * (pre > weights["threshold"])
    torch.testing.assert_close(f @ weights["W_dec"] + weights["b_dec"], sae(x)[0], rtol=1e-4, atol=1e-5)
    loaded = SparseAutoencoder.load(tmp_path / "btk")
    torch.testing.assert_close(loaded.threshold, sae.threshold)
    torch.testing.assert_close(loaded(x)[1], sae(x)[1])


def test_stopping_rule():
    from rlhf_lens.sae.training_run import plateaued

    assert not plateaued([5, 4, 3], window=3, tolerance=0.01)  # too few points
    assert not plateaued([10, 5, 4, 3, 2.9], window=2, tolerance=0.01)
    assert plateaued([10, 5, 4, 3.99, 3.985], window=2, tolerance=0.01)
    assert plateaued([10, 5, 4, 4.2, 4.1], window=2, tolerance=0.01)  # got worse: no improvement


def test_converges_on_a_plateau_and_not_before():
    """Non-negative data in d dimensions and a tied SAE with m = d, l1 = 0: the optimum reconstructs exactly
    (MSE 0). Training until converged stops at the first evaluation where the rule holds, near the optimum."""
    from rlhf_lens.sae.training_run import plateaued

    g = torch.Generator().manual_seed(0)
    acts = torch.rand(20000, 8, generator=g) * (torch.rand(20000, 8, generator=g) < 0.3)
    cfg = SAEConfig(d_in=8, dict_size=8, l1=0.0, lr=1e-2, batch_size=64, eval_every=25, window=4, tolerance=0.01,
                    holdout=2000, dead_steps=0)
    sae = train_saes(TensorSource(acts), [cfg], None, quiet=True)[0]
    m = sae.metrics
    losses = [p["heldout_loss"] for p in m["curve"]]
    assert m["stop_reason"] == "converged" and m["converged"] and m["still_improving"] is False
    assert plateaued(losses, 4, 0.01)
    assert not any(plateaued(losses[:i], 4, 0.01) for i in range(1, len(losses)))  # not before
    assert m["steps"] == 25 * len(losses) and m["tokens_seen"] <= 64 * m["steps"]
    variance = float(acts[-2000:].var(0).sum() / 8)
    assert losses[-1] < 0.02 * variance, (losses[0], losses[-1], variance)  # near the optimum 0
    assert all(set(p) >= {"step", "tokens", "train_loss", "heldout_loss", "heldout_mse", "heldout_l0"} for p in m["curve"])


def test_lr_decay_cools_down_after_the_plateau_or_ends_a_fixed_run(small_acts):
    """Until converged, --lr-decay K trains K more steps from the plateau the plain run stops at (the two runs are
    the same until then); with --epochs N the decay takes the run's last K steps."""
    source = TensorSource(small_acts)
    common = dict(d_in=16, dict_size=24, arch="topk", k=3, lr=3e-3, holdout=204, eval_every=10, batch_size=64, seed=1)
    plain, cooled = train_saes(source, [SAEConfig(**common), SAEConfig(**common, lr_decay=50)], None, quiet=True)
    assert plain.metrics["stop_reason"] == cooled.metrics["stop_reason"] == "converged"
    assert cooled.metrics["lr_decay_start"] == plain.metrics["steps"] and plain.metrics["lr_decay_start"] is None
    assert cooled.metrics["steps"] == plain.metrics["steps"] + 50
    assert cooled.metrics["curve"][:len(plain.metrics["curve"]) - 1] == plain.metrics["curve"][:-1]
    fixed = train_saes(source, [SAEConfig(**{**common, "epochs": 2}, lr_decay=20)], None, quiet=True)[0]
    assert fixed.metrics["steps"] == 2 * 29 and fixed.metrics["lr_decay_start"] == 2 * 29 - 20


def test_fixed_epochs_run_exactly_and_flag_still_improving(small_acts):
    source = CountingSource(TensorSource(small_acts).acts)
    cfg = SAEConfig(d_in=16, dict_size=24, l1=1e-2, lr=1e-4, epochs=3, batch_size=64, eval_every=5, seed=1)
    sae = train_saes(source, [cfg], None, quiet=True)[0]
    m = sae.metrics
    assert source.passes[:3] == [0, 1, 2] and m["epochs"] == 3 and m["stop_reason"] == "epochs"
    assert m["steps"] == 3 * 29 and m["tokens_seen"] == 3 * (2048 - 204)
    # at lr 1e-4 the held-out loss is still falling fast after 3 epochs
    assert m["still_improving"] is True and m["converged"] is False
    assert any("still falling" in w for w in m["warnings"])


def test_token_budget_caps_training(small_acts):
    cfg = SAEConfig(d_in=16, dict_size=24, l1=1e-2, lr=1e-4, batch_size=64, max_tokens=1000, seed=1)
    m = train_saes(TensorSource(small_acts), [cfg], None, quiet=True)[0].metrics
    assert m["stop_reason"] == "max_tokens" and m["tokens_seen"] == 16 * 64 and not m["converged"]


def test_a_stop_by_the_time_cap_is_flagged_as_machine_dependent(small_acts):
    """The time cap stops where the machine's speed puts it (the same seed, other weights on a busier machine): the
    metrics say so, where a token cap stops at the same step everywhere."""
    cfg = SAEConfig(d_in=16, dict_size=24, l1=1e-2, lr=1e-4, batch_size=64, eval_every=2, max_seconds=1e-9, seed=1)
    m = train_saes(TensorSource(small_acts), [cfg], None, quiet=True)[0].metrics
    assert m["stop_reason"] == "max_seconds" and not m["converged"]
    assert any("time cap" in w and "--max-tokens" in w for w in m["warnings"])
    capped = train_saes(TensorSource(small_acts), [dataclasses.replace(cfg, max_seconds=0, max_tokens=1000)], None,
                        quiet=True)[0].metrics
    assert capped["stop_reason"] == "max_tokens" and not any("time cap" in w for w in capped["warnings"])


@pytest.mark.parametrize("arch", ["tied", "topk"])
def test_dead_latents_are_revived(arch):
    """Planted dead latents (a large negative encoder bias): resampling (plus the auxiliary-k loss for topk)
    brings them back; with --dead-steps 0 they stay dead."""
    acts, _ = make_synthetic(SyntheticConfig(d=16, features=32, sparsity=0.05, n=16384, seed=2))
    planted = torch.arange(0, 32, 4)
    fired = {}
    for dead_steps in (20, 0):
        cfg = SAEConfig(d_in=16, dict_size=32, arch=arch, k=4 if arch == "topk" else None, l1=1e-2, lr=1e-2,
                        epochs=3, batch_size=128, eval_every=20, dead_steps=dead_steps, seed=0)
        run_sae = SparseAutoencoder(cfg)
        from rlhf_lens.sae import training_run

        original = training_run.SparseAutoencoder

        def planted_sae(c, _original=original):
            sae = _original(c)
            with torch.no_grad():
                sae.b_enc[planted] = -2.0
            return sae

        training_run.SparseAutoencoder = planted_sae
        try:
            run_sae = train_saes(TensorSource(acts), [cfg], None, quiet=True)[0]
        finally:
            training_run.SparseAutoencoder = original
        fired[dead_steps] = int((run_sae.encode(acts[:4096])[:, planted] > 0).any(0).sum())
    assert fired[0] <= 1, fired
    assert fired[20] >= 6, fired


def test_sparse_path_with_no_active_code():
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=16))
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # every code is off
    stepper = Stepper(sae, 1e-3, 1e-3)
    x = torch.randn(10, 8)
    sq, l1sum, counts = stepper.grads(x, sparse=True)
    assert int(counts.sum()) == 0 and float(l1sum) == 0.0
    assert float(sq) == pytest.approx(float(x.pow(2).sum()), rel=1e-5)


def test_train_save_load_and_saelens_layout(small_acts, tmp_path):
    out = tmp_path / "sae"
    cfg = SAEConfig(d_in=16, dict_size=24, l1=1e-2, epochs=2, batch_size=128, seed=1)
    sae = train_saes(TensorSource(small_acts), [cfg], [out])[0]
    # rows of the dictionary stay unit-norm after training
    torch.testing.assert_close(sae.dictionary.norm(dim=1), torch.ones(24))
    weights = load_file(str(out / "sae_weights.safetensors"))
    assert {k: list(v.shape) for k, v in weights.items()} == {"W_enc": [16, 24], "b_enc": [24], "W_dec": [24, 16], "b_dec": [16]}
    torch.testing.assert_close(weights["W_dec"].norm(dim=1), torch.ones(24))
    torch.testing.assert_close(weights["W_enc"], weights["W_dec"].t())  # tied: the normalised matrix, both ways
    cfg_json = json.loads((out / "cfg.json").read_text())
    assert (cfg_json["d_in"], cfg_json["d_sae"], cfg_json["architecture"], cfg_json["apply_b_dec_to_input"]) == (16, 24, "standard", False)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mse", "fvu", "mean_l0", "dead_fraction", "tokens_seen", "train_seconds", "tokens_per_s", "dense_codes", "mostly_dead"):
        assert key in metrics
    # the last tenth of the rows (at most --holdout) is held out of training
    assert metrics["heldout_tokens"] == 204 and metrics["tokens_seen"] == 2 * (2048 - 204)
    assert not (out / "checkpoint.pt").exists()
    # round trip: the loaded SAE computes the same thing
    loaded = SparseAutoencoder.load(out)
    x = TensorSource(small_acts).acts[:64]
    for a, b in zip(sae(x), loaded(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the weights as SAELens applies them (x @ W_enc + b_enc, ReLU, @ W_dec + b_dec) give the same reconstruction
    f = torch.relu(x @ weights["W_enc"] + weights["b_enc"])
    torch.testing.assert_close(f @ weights["W_dec"] + weights["b_dec"], sae(x)[0], rtol=1e-4, atol=1e-5)
    # a finished folder is loaded, not retrained
    mtime = (out / "sae_weights.safetensors").stat().st_mtime_ns
    train_saes(TensorSource(small_acts), [cfg], [out])
    assert (out / "sae_weights.safetensors").stat().st_mtime_ns == mtime


def test_load_foreign_saelens_standard_sae(tmp_path):
    """A SAELens standard SAE (b_dec subtracted from the input, decoder rows not unit) folds into ours exactly."""
    torch.manual_seed(2)
    d, m = 6, 10
    w_enc, b_enc = torch.randn(d, m), torch.randn(m) * 0.1
    w_dec, b_dec = torch.randn(m, d) * 3, torch.randn(d)
    folder = tmp_path / "foreign"
    folder.mkdir()
    save_file({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d, "d_sae": m,
                                                 "apply_b_dec_to_input": True, "normalize_activations": "none"}))
    sae = SparseAutoencoder.load(folder)
    x = torch.randn(20, d)
    theirs = torch.relu((x - b_dec) @ w_enc + b_enc) @ w_dec + b_dec
    torch.testing.assert_close(sae(x)[0], theirs, rtol=1e-4, atol=1e-4)


def test_recovers_ground_truth_and_sizes_agree():
    acts, truth = make_synthetic(SyntheticConfig(d=16, features=32, sparsity=0.05, n=32768, seed=3))
    configs = [SAEConfig(d_in=16, dict_size=m, l1=2e-2, lr=1e-2, epochs=5, seed=0) for m in (32, 64)]
    small, large = train_saes(TensorSource(acts), configs, None, quiet=True)
    report = recovery(small, truth, pair=large)
    # most true directions have a dictionary row with cosine > 0.9, in both dictionaries
    assert report["dictionary"]["recovered_fraction"] > 0.6, report["dictionary"]
    assert report["pair"]["recovered_fraction"] > 0.6, report["pair"]
    # and the two sizes agree on them: the top-MMCS features are true directions
    assert report["top_real_fraction"] >= 0.8, report["top_features"]


class CountingSource:
    """An ActivationSource that counts passes over the data and can fail in one epoch (a killed run)."""

    def __init__(self, acts: torch.Tensor, fail_epoch: int | None = None):
        self.inner = TensorSource(acts)
        self.d, self.n = self.inner.d, self.inner.n
        self.passes: list[int] = []
        self.fail_epoch = fail_epoch

    def split(self, rows):
        train, held = self.inner.split(rows)
        other = CountingSource(train.acts, self.fail_epoch)
        other.passes = self.passes
        return other, held

    def batches(self, batch_size, seed, epoch):
        self.passes.append(epoch)
        for i, batch in enumerate(self.inner.batches(batch_size, seed, epoch)):
            if epoch == self.fail_epoch and i == 3:
                raise KeyboardInterrupt
            yield batch


def test_one_pass_trains_several_and_matches_alone(small_acts):
    acts = TensorSource(small_acts).acts
    configs = [SAEConfig(d_in=16, dict_size=m, l1=1e-2, epochs=2, batch_size=256, seed=s) for m, s in ((16, 0), (32, 0), (32, 1))]
    source = CountingSource(acts)
    together = train_saes(source, configs, None, quiet=True, eval_tokens=256)
    assert source.passes[:2] == [0, 1]  # one pass per epoch for all three (then the metrics pass)
    alone = train_saes(TensorSource(acts), [configs[2]], None, quiet=True, eval_tokens=256)[0]
    assert torch.equal(together[2].decoder, alone.decoder)  # same seed, same result, whatever trains beside it
    assert not torch.equal(together[1].decoder, together[2].decoder)


def test_killed_run_resumes_to_the_same_result(small_acts, tmp_path):
    acts = TensorSource(small_acts).acts
    cfg = SAEConfig(d_in=16, dict_size=24, l1=1e-2, epochs=3, batch_size=256, seed=2)
    with pytest.raises(KeyboardInterrupt):
        train_saes(CountingSource(acts, fail_epoch=2), [cfg], [tmp_path / "killed"], quiet=True)
    assert (tmp_path / "killed" / "checkpoint.pt").is_file() and not (tmp_path / "killed" / "metrics.json").exists()
    resumed_source = CountingSource(acts)
    resumed = train_saes(resumed_source, [cfg], [tmp_path / "killed"], quiet=True)[0]
    assert resumed_source.passes[0] == 2  # epochs 0 and 1 were not redone
    straight = train_saes(TensorSource(acts), [cfg], [tmp_path / "straight"], quiet=True)[0]
    assert torch.equal(resumed.decoder, straight.decoder) and torch.equal(resumed.b_enc, straight.b_enc)
    assert resumed.metrics["tokens_seen"] == straight.metrics["tokens_seen"] == 3 * (2048 - 204)
    assert resumed.metrics["curve"] == straight.metrics["curve"]


def test_l1_search_lands_near_target_l0():
    acts, _ = make_synthetic(SyntheticConfig(d=16, features=32, sparsity=0.05, n=8192, seed=5))
    source = TensorSource(acts)
    target = 4.0
    cfg = SAEConfig(d_in=16, dict_size=32, l1=1e-3, lr=1e-2, target_l0=target, epochs=2, batch_size=128, seed=0)
    l1, record = calibrate_l1(source, cfg, quiet=True)
    assert abs(record["sample_l0"] - target) <= 0.1 * target, record
    assert record["trials"][0]["mean_l0"] > 2 * target  # the starting l1 (the paper's) was far off
    sae = train_saes(source, [cfg], None, quiet=True)[0]
    assert sae.metrics["l1"] == pytest.approx(l1)
    assert sae.metrics["calibration"]["l1"] == pytest.approx(l1)
    assert abs(sae.metrics["mean_l0"] - target) <= 0.15 * target, sae.metrics["mean_l0"]


def test_config_checks():
    with pytest.raises(UserError, match="dict-size"):
        SAEConfig(d_in=4, dict_size=0).check()
    with pytest.raises(UserError, match="--k"):
        SAEConfig(d_in=4, dict_size=8, arch="topk").check()
    with pytest.raises(UserError, match="--arch"):
        SAEConfig(d_in=4, dict_size=8, arch="gated").check()
    with pytest.raises(UserError, match="--k"):
        SAEConfig(d_in=4, dict_size=8, arch="batchtopk", k=9).check()
    with pytest.raises(UserError, match="held-out"):
        SAEConfig(d_in=4, dict_size=8, holdout=0).check()
    with pytest.raises(UserError, match="--tolerance"):
        SAEConfig(d_in=4, dict_size=8, tolerance=-1).check()


# --- the command line -------------------------------------------------------------------------


def test_cli_train_flags_dense_and_dead(small_acts, tmp_path):
    dense = run_cli("train-sae", small_acts, "--dict-size", "16", "--l1", "0", "--epochs", "1", "--out", tmp_path / "dense")
    assert dense.returncode == 0, dense.stderr
    assert "dense codes" in dense.stderr
    assert json.loads((tmp_path / "dense" / "metrics.json").read_text())["dense_codes"] is True
    dead = run_cli("train-sae", small_acts, "--dict-size", "16", "--l1", "50", "--lr", "0.1", "--epochs", "2", "--out", tmp_path / "dead", "--json")
    assert dead.returncode == 0, dead.stderr
    assert json.loads(dead.stdout)["mostly_dead"] is True and "never fired" in dead.stderr


def test_bad_activation_files(tmp_path):
    rank3 = tmp_path / "rank3.safetensors"
    save_file({"activations": torch.zeros(2, 3, 4)}, str(rank3))
    with pytest.raises(UserError, match="must be 2-D"):
        TensorSource(rank3)
    with pytest.raises(UserError, match="no such file"):
        TensorSource(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors"):
        TensorSource(junk)
    with pytest.raises(UserError, match="floating point"):
        TensorSource(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(UserError, match="does not match"):
        train_saes(TensorSource(torch.randn(8, 3)), [SAEConfig(d_in=4, dict_size=4)], None, quiet=True)


def test_cli_bad_input(tmp_path, small_acts):
    wrong_key = tmp_path / "wrong_key.safetensors"
    save_file({"acts": torch.zeros(4, 3)}, str(wrong_key))
    assert_user_error(run_cli("train-sae", wrong_key, "--dict-size", "4", "--out", tmp_path / "o1"), "no tensor 'activations'", "acts")
    nan = tmp_path / "nan.safetensors"
    bad = torch.randn(10, 4)
    bad[7, 2] = float("nan")
    bad[8, 0] = float("inf")
    save_file({"activations": bad}, str(nan))
    assert_user_error(run_cli("train-sae", nan, "--dict-size", "4", "--out", tmp_path / "o2"), "NaN/inf", "row 7")
    assert_user_error(run_cli("train-sae", small_acts, "--dict-size", "0", "--out", tmp_path / "o3"), "--dict-size must be >= 1")
    assert_user_error(run_cli("train-sae", small_acts, "--dict-size", "4", "--arch", "topk", "--out", tmp_path / "o4"), "--k")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_cli_other_config_in_out_dir_is_refused_and_kept(small_acts, tmp_path):
    out = tmp_path / "sae"
    run_cli("train-sae", small_acts, "--dict-size", "8", "--epochs", "1", "--out", out, check=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_cli("train-sae", small_acts, "--dict-size", "8", "--epochs", "1", "--l1", "0.5", "--out", out)
    assert_user_error(result, "different config")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_trains_from_an_activation_store(tiny_model_dir, corpus_file, tmp_path):
    from rlhf_lens.harvest import HarvestConfig, harvest
    from rlhf_lens.sae import open_source

    store = harvest(str(tiny_model_dir), HarvestConfig(layers=[0, 2], corpus=str(corpus_file), max_docs=12,
                                                       shard_tokens=256), tmp_path / "store")
    with pytest.raises(UserError, match="--layer"):
        open_source(store.path)
    with pytest.raises(UserError, match="layer 5"):
        open_source(store.path, 5)
    source = open_source(store.path, 2)
    cfg = SAEConfig(d_in=store.d, dict_size=2 * store.d, epochs=1, batch_size=64)
    sae = train_saes(source, [cfg], [tmp_path / "sae"], quiet=True)[0]
    held = min(4096, store.n_tokens // 10)
    assert sae.metrics["heldout_tokens"] == held and sae.metrics["tokens_seen"] == store.n_tokens - held
    # the held-out rows are the store's last rows, and training never sees them
    train, heldout = source.split(held)
    last = store.read_shard(len(store.manifest["shards"]) - 1, 2).acts
    torch.testing.assert_close(heldout[-min(held, last.shape[0]):], last[-min(held, last.shape[0]):])
    assert sum(x.shape[0] for x in train.batches(64, 0, 0)) == store.n_tokens - held
    assert SparseAutoencoder.load(tmp_path / "sae").dictionary.shape == (2 * store.d, store.d)
