#!/usr/bin/env python3
"""Do SAELens's own loader and our `SparseAutoencoder.load` give the same codes and reconstructions?

Our side (run with the project's venv, `PYTHONPATH=src`): writes `rlhf-lens synthetic` data (d 32, 64 features),
trains a tied, an untied, a TopK and a BatchTopK SAE (d 32, m 64, k 4; 3 epochs of 32768 rows at batch 256, 384
steps) with `train_saes` into DIR/<arch>/, loads each with `SparseAutoencoder.load` and writes its `encode` and
`decode(encode(x))` on 256 rows to DIR/ours.safetensors.

SAELens side (`--saelens-side DIR`, re-executed in the SAELens anchors' venv that `make anchors` builds; see
bench/anchor_venv.py): `SAE.load_from_disk(DIR/<arch>)`, then its
`encode` and `decode` on the same rows; it also saves a fresh SAELens `BatchTopKTrainingSAE` with
`save_inference_model` to DIR/saelens_batchtopk_reference/ to show which architecture and keys SAELens itself
writes for BatchTopK. It prints one JSON line; our side prints, per architecture, the class SAELens loads it as,
max |f - ours| and max |x_hat - ours|, and exits 1 if any difference exceeds --tol.

    make anchors   # once
    PYTHONPATH=src .venv/bin/python bench/saelens_load_check.py [--out DIR] [--tol 1e-5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from anchor_venv import enter, missing_line

ARCHS = ("tied", "untied", "topk", "batchtopk")
K = 4


def saelens_side(out: Path) -> int:
    """Runs under the anchors venv: load every folder with SAELens and print its codes' differences as JSON."""
    import warnings
    from importlib.metadata import version

    import torch
    from safetensors.torch import load_file

    warnings.filterwarnings("ignore")
    from sae_lens import SAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    ours = load_file(str(out / "ours.safetensors"))
    x = ours["x"]
    result: dict = {"sae_lens": version("sae-lens"), "torch": torch.__version__, "archs": {}}
    for arch in ARCHS:
        entry: dict = {}
        try:
            sae = SAE.load_from_disk(str(out / arch), device="cpu")
            sae.eval()
            with torch.no_grad():
                f = sae.encode(x)
                x_hat = sae.decode(f)
            entry.update(cls=type(sae).__name__, architecture=sae.cfg.architecture(),
                         max_f_diff=(f - ours[f"f_{arch}"]).abs().max().item(),
                         max_xhat_diff=(x_hat - ours[f"xhat_{arch}"]).abs().max().item(),
                         l0=(f != 0).float().sum(-1).mean().item(),
                         apply_b_dec_to_input=sae.cfg.apply_b_dec_to_input)
            if hasattr(sae, "threshold"):
                entry["threshold"] = sae.threshold.detach().unique().tolist()[:4]
        except Exception as e:  # noqa: BLE001 - reported, not raised: the point is to see which arch fails
            entry["error"] = f"{type(e).__name__}: {e}"
        result["archs"][arch] = entry
    # what SAELens itself writes for a BatchTopK SAE it trained
    torch.manual_seed(0)
    ref = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=x.shape[1], d_sae=64, k=K))
    ref_dir = out / "saelens_batchtopk_reference"
    ref.save_inference_model(str(ref_dir))
    ref_cfg = json.loads((ref_dir / "cfg.json").read_text())
    ours_cfg = json.loads((out / "batchtopk" / "cfg.json").read_text())
    result["reference_batchtopk"] = {
        "architecture": ref_cfg["architecture"],
        "weights": sorted(load_file(str(ref_dir / "sae_weights.safetensors"))),
        "loads_as": type(SAE.load_from_disk(str(ref_dir))).__name__,
        "cfg_keys_only_in_saelens": sorted(set(ref_cfg) - set(ours_cfg)),
        "cfg_keys_only_in_ours": sorted(set(ours_cfg) - set(ref_cfg)),
    }
    print(json.dumps(result))
    return 0


def ours_side(out: Path, tol: float) -> int:
    import torch
    from safetensors.torch import save_file

    from rlhf_lens.sae import SAEConfig, SparseAutoencoder, TensorSource, train_saes
    from rlhf_lens.synthetic import SyntheticConfig, write_synthetic

    os.environ.setdefault("RLHF_LENS_QUIET", "1")
    out.mkdir(parents=True, exist_ok=True)
    data = write_synthetic(SyntheticConfig(d=32, features=64, sparsity=0.04, n=32768 + 256, seed=0),
                           out / "acts.safetensors")
    source = TensorSource(data)
    configs = [SAEConfig(d_in=32, dict_size=64, arch=arch, k=K if arch in ("topk", "batchtopk") else None,
                         epochs=3, holdout=256, batch_size=256) for arch in ARCHS]
    train_saes(source, configs, [out / arch for arch in ARCHS], quiet=True)
    from safetensors.torch import load_file

    x = load_file(str(data))["activations"][-256:].contiguous()  # the held-out rows
    tensors = {"x": x}
    with torch.no_grad():
        for arch in ARCHS:
            sae = SparseAutoencoder.load(out / arch)
            f = sae.encode(x)
            tensors[f"f_{arch}"], tensors[f"xhat_{arch}"] = f.contiguous(), sae.decode(f).contiguous()
    save_file(tensors, str(out / "ours.safetensors"))

    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--saelens-side", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        print(proc.stderr[-3000:], file=sys.stderr)
        print("FAIL: the SAELens side did not run")
        return 1
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"INFO sae_lens={res['sae_lens']} torch={res['torch']} (anchors venv); data d 32, m 64, k {K}; "
          f"256 held-out rows; folders under {out}")
    ok = True
    for arch in ARCHS:
        e = res["archs"][arch]
        cfg = json.loads((out / arch / "cfg.json").read_text())
        if "error" in e:
            ok = False
            print(f"LOAD {arch}: cfg architecture {cfg['architecture']!r}: SAELens failed: {e['error']}")
            continue
        ours_l0 = (tensors[f"f_{arch}"] != 0).float().sum(-1).mean().item()
        ok &= e["max_f_diff"] <= tol and e["max_xhat_diff"] <= tol
        thr = f" threshold {e['threshold']}" if "threshold" in e else ""
        print(f"LOAD {arch}: cfg architecture {cfg['architecture']!r} -> SAELens {e['cls']} "
              f"({e['architecture']}); max |f - ours| = {e['max_f_diff']:.3g}, "
              f"max |x_hat - ours| = {e['max_xhat_diff']:.3g}; L0 SAELens {e['l0']:.2f} / ours {ours_l0:.2f}{thr}")
    ref = res["reference_batchtopk"]
    print(f"INFO SAELens's own BatchTopKTrainingSAE.save_inference_model writes architecture "
          f"{ref['architecture']!r}, weights {ref['weights']}, loads as {ref['loads_as']}; cfg keys only in "
          f"SAELens's: {ref['cfg_keys_only_in_saelens']}; only in ours: {ref['cfg_keys_only_in_ours']}")
    print("OK: SAELens loads all four and matches ours" if ok else f"FAIL: a load failed or differs by > {tol}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="working folder (default: a new temporary one)")
    p.add_argument("--tol", type=float, default=1e-5, help="largest accepted |difference|")
    p.add_argument("--saelens-side", default=None, metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.saelens_side:
        enter("saelens", ("torch", "safetensors", "sae_lens"))  # re-executes this script in that venv
        return saelens_side(Path(args.saelens_side))
    if problem := missing_line("saelens"):
        sys.exit(problem)  # before training the SAEs, not after
    return ours_side(Path(args.out or tempfile.mkdtemp(prefix="saelens-load-check-")), args.tol)


if __name__ == "__main__":
    sys.exit(main())
