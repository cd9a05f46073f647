"""Where and in what precision SAEs train: bfloat16 GEMMs, a CUDA device (tests marked `gpu`, skipped without one),
one-line errors for a device this machine lacks, and SAE folders reused whatever device trained them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.sae import SAEConfig, SparseAutoencoder, TensorSource, train_saes
from rlhf_lens.sae.step import Stepper
from rlhf_lens.synthetic import SyntheticConfig, make_synthetic

ARCHS = ["tied", "untied", "topk", "batchtopk"]


@pytest.fixture(scope="module")
def acts() -> torch.Tensor:
    """Synthetic activations with known features (d 16, 32 true directions)."""
    return make_synthetic(SyntheticConfig(d=16, features=32, sparsity=0.05, n=4096, seed=5))[0]


def _off_init(arch: str, device: str = "cpu", dtype: str = "float32") -> SparseAutoencoder:
    """An SAE away from its initial point (non-unit raw rows, biases, an encoder that differs from the decoder)."""
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=12, dict_size=30, arch=arch, k=4 if arch in ("topk", "batchtopk") else None, l1=0.02,
                    seed=3, dtype=dtype)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.decoder.mul_(torch.rand(30, 1) + 0.5)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.1)
        if sae.encoder is not None:
            sae.encoder.add_(0.2 * torch.randn_like(sae.encoder))
    return sae.to(device)


def _step_grads(sae: SparseAutoencoder, x: torch.Tensor, l1: float) -> tuple[dict, float]:
    stepper = Stepper(sae, l1, 1e-3)
    sq, _, _ = stepper.grads(x, sparse=False)
    return {name: p.grad.clone() for name, p in sae.named_parameters()}, float(sq)


def _autograd(sae: SparseAutoencoder, x: torch.Tensor, l1: float) -> dict:
    for p in sae.parameters():
        p.grad = None
    sae.loss(x, l1=l1).backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_gradients_track_float32(arch):
    """bf16 GEMMs change the gradients by about bf16's precision (2^-8; measured <= 1.3% for tied/untied), not more.
    TopK/BatchTopK also select their codes on bf16 products: a code at the selection boundary can flip (up to 10%)."""
    bound = 0.15 if arch in ("topk", "batchtopk") else 3e-2
    x = torch.randn(64, 12)
    full, sq_full = _step_grads(_off_init(arch), x, 0.02)
    low, sq_low = _step_grads(_off_init(arch, dtype="bfloat16"), x, 0.02)
    assert sq_low == pytest.approx(sq_full, rel=2e-2)
    for name in full:
        error = float((low[name] - full[name]).norm() / full[name].norm().clamp_min(1e-12))
        assert error < bound, (name, error)


def test_the_dense_step_follows_the_l1_warmup():
    """The L1 slope rides in a cached GEMM bias; a new l1 (the warm-up moves it every step) must replace it."""
    sae = _off_init("tied")
    x = torch.randn(64, 12)
    stepper = Stepper(sae, 1e-4, 1e-3)
    stepper.grads(x, sparse=False)
    stepper.l1 = 0.05
    stepper.grads(x, sparse=False)
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    for name, grad in _autograd(sae, x, 0.05).items():
        torch.testing.assert_close(fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bfloat16_training_reaches_float32_quality(acts):
    configs = [SAEConfig(d_in=16, dict_size=32, arch="topk", k=3, lr=3e-3, epochs=3, batch_size=128, seed=0, dtype=dtype)
               for dtype in ("float32", "bfloat16")]
    full, low = (train_saes(TensorSource(acts), [cfg], None, quiet=True)[0] for cfg in configs)
    assert low.metrics["heldout_fvu"] == pytest.approx(full.metrics["heldout_fvu"], rel=0.1)
    assert low.cfg.dtype == "bfloat16" and low.decoder.dtype == torch.float32  # master weights stay float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_a_gpu_this_machine_lacks_is_one_clear_line(acts, tmp_path):
    cfg = SAEConfig(d_in=16, dict_size=32, epochs=1, device="cuda")
    with pytest.raises(UserError, match="CUDA is not available"):
        train_saes(TensorSource(acts), [cfg], [tmp_path / "sae"], quiet=True)
    assert not (tmp_path / "sae").exists()
    path = tmp_path / "acts.safetensors"
    save_file({"activations": acts}, str(path))
    result = run_cli("train-sae", path, "--dict-size", "32", "--device", "cuda", "--out", tmp_path / "cli")
    assert_user_error(result, "CUDA is not available", "--device cpu")
    assert_user_error(run_cli("train-sae", path, "--dict-size", "32", "--device", "tpu", "--out", tmp_path / "cli"),
                      "--device must be cpu, cuda or cuda:N")
    assert_user_error(run_cli("train-sae", path, "--dict-size", "32", "--dtype", "float16", "--out", tmp_path / "cli"),
                      "--dtype must be one of float32, bfloat16")
    assert not (tmp_path / "cli").exists()


def test_a_finished_sae_is_reused_whatever_device_trained_it(acts, tmp_path):
    """The device is not part of what an SAE is; a folder written before `device`/`dtype` existed is reused too."""
    assert SAEConfig(device="cpu").identity() == SAEConfig(device="cuda:1").identity()
    assert SAEConfig(dtype="float32").identity() != SAEConfig(dtype="bfloat16").identity()
    cfg = SAEConfig(d_in=16, dict_size=32, l1=1e-2, epochs=1, batch_size=256, seed=1)
    first = train_saes(TensorSource(acts), [cfg], [tmp_path / "sae"], quiet=True)[0]
    cfg_file = tmp_path / "sae" / "cfg.json"
    saved = json.loads(cfg_file.read_text())
    del saved["rlhf_lens"]["config"]["device"], saved["rlhf_lens"]["config"]["dtype"]  # as an older version wrote it
    cfg_file.write_text(json.dumps(saved))
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    written = weights.stat().st_mtime_ns
    again = train_saes(TensorSource(acts), [cfg], [tmp_path / "sae"], quiet=True)[0]
    assert weights.stat().st_mtime_ns == written  # loaded, not retrained
    torch.testing.assert_close(first.dictionary, again.dictionary)
    with pytest.raises(UserError, match="different config"):
        train_saes(TensorSource(acts), [SAEConfig(**{**cfg.__dict__, "dtype": "bfloat16"})], [tmp_path / "sae"],
                   quiet=True)


def test_run_config_takes_the_sae_device_from_the_model(tmp_path):
    from rlhf_lens.config import load_config

    with pytest.raises(UserError, match="sae.device is taken from model.device"):
        load_config(preset="tiny", overrides=["sae.device=cuda"])
    with pytest.raises(UserError, match="sae.dtype"):
        load_config(preset="tiny", overrides=["sae.dtype=float16"])


# --- on a GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_gradients_equal_autograd(arch):
    sae = _off_init(arch, device="cuda")
    x = torch.randn(64, 12, device="cuda")
    fast, _ = _step_grads(sae, x, 0.02)
    for name, grad in _autograd(sae, x, 0.02).items():
        torch.testing.assert_close(fast[name], grad, rtol=1e-4, atol=1e-6, msg=f"{arch} {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["tied", "topk", "batchtopk"])
def test_cuda_training_matches_the_cpu(acts, tmp_path, arch):
    """Same config, same data order: the GPU run ends where the CPU run does (up to float reordering), its files
    are the CPU's layout and what train_saes returns lives on the CPU."""
    k = 3 if arch != "tied" else None
    cfgs = [SAEConfig(d_in=16, dict_size=32, arch=arch, k=k, l1=1e-2, lr=3e-3, epochs=2, batch_size=128, seed=0,
                      device=device) for device in ("cpu", "cuda")]
    cpu, gpu = (train_saes(TensorSource(acts), [cfg], [tmp_path / cfg.device], quiet=True)[0] for cfg in cfgs)
    assert gpu.decoder.device.type == "cpu"
    cosines = (cpu.dictionary * gpu.dictionary).sum(1)
    assert float(cosines.min()) > 0.99, cosines.min()
    assert gpu.metrics["fvu"] == pytest.approx(cpu.metrics["fvu"], rel=0.02, abs=1e-3)
    assert gpu.metrics["steps"] == cpu.metrics["steps"] and gpu.metrics["train_seconds"] > 0
    loaded = SparseAutoencoder.load(tmp_path / "cuda")
    torch.testing.assert_close(loaded.dictionary, gpu.dictionary)


@pytest.mark.gpu
def test_cuda_bfloat16_until_converged_from_a_gpu_tensor(acts):
    """Activations already on the GPU, bf16 GEMMs, the stopping rule: converges to float32's quality."""
    source = TensorSource(acts.cuda())
    runs = [SAEConfig(d_in=16, dict_size=32, arch="batchtopk", k=3, lr=3e-3, holdout=409, eval_every=20,
                      batch_size=128, seed=0, device="cuda", dtype=dtype) for dtype in ("float32", "bfloat16")]
    full, low = train_saes(source, runs, None, quiet=True)
    assert low.metrics["stop_reason"] == full.metrics["stop_reason"] == "converged"
    assert low.metrics["heldout_fvu"] == pytest.approx(full.metrics["heldout_fvu"], rel=0.1)
    assert abs(low.metrics["heldout_l0"] - 3) < 0.5


@pytest.mark.gpu
def test_cuda_killed_run_resumes(acts, tmp_path):
    class Killed(TensorSource):
        def batches(self, batch_size, seed, epoch):
            for i, batch in enumerate(super().batches(batch_size, seed, epoch)):
                if epoch == 1 and i == 3:
                    raise KeyboardInterrupt
                yield batch

    cfg = SAEConfig(d_in=16, dict_size=32, arch="topk", k=3, epochs=2, holdout=0, batch_size=128, seed=2, device="cuda")
    with pytest.raises(KeyboardInterrupt):
        train_saes(Killed(acts), [cfg], [tmp_path / "killed"], quiet=True)
    resumed = train_saes(TensorSource(acts), [cfg], [tmp_path / "killed"], quiet=True)[0]
    straight = train_saes(TensorSource(acts), [cfg], [tmp_path / "straight"], quiet=True)[0]
    torch.testing.assert_close(resumed.decoder, straight.decoder, rtol=1e-5, atol=1e-6)
    assert resumed.metrics["steps"] == straight.metrics["steps"]
    assert Path(tmp_path / "killed" / "metrics.json").is_file()
