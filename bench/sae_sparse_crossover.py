#!/usr/bin/env python3
"""Where the tied SAE's sparse path starts to pay: dense vs sparse step at the code densities a run passes through.

For each l1 in --l1 a tied SAE (d 512, m --dict, batch 4096, on the same synthetic activations as
bench/bench_sae.py) trains --steps steps from initialisation; the density of its codes then decides nothing
here: both paths of `Stepper.grads` are timed on that state, interleaved rep by rep. The automatic path takes
the sparse one at density <= SPARSE_MAX_DENSITY (rlhf_lens/sae/config.py); that constant should sit where the
two columns cross.

    PYTHONPATH=src .venv/bin/python bench/sae_sparse_crossover.py --threads 2 --dict 1024
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_sae import bench_data, interleaved, our_step_fn, train_steps
from rlhf_lens.sae import SAEConfig, SparseAutoencoder, TensorSource
from rlhf_lens.sae.config import SPARSE_MAX_DENSITY
from rlhf_lens.sae.step import Stepper
from rlhf_lens.synthetic import write_synthetic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dict", type=int, default=1024)
    p.add_argument("--l1", default="3e-4,4e-4,5e-4", help="comma-separated l1 values (each gives one density)")
    p.add_argument("--steps", type=int, default=160, help="training steps of batch 4096 before timing")
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = write_synthetic(bench_data(512, 65536), Path(tempfile.mkdtemp(prefix="crossover-")) / "acts.safetensors")
    source = TensorSource(data)
    batches = [x for x, _ in zip(source.batches(4096, 0, 0), range(4))]
    print(f"INFO threads={torch.get_num_threads()} m={args.dict} SPARSE_MAX_DENSITY={SPARSE_MAX_DENSITY}")
    for l1 in (float(v) for v in args.l1.split(",")):
        stepper = Stepper(SparseAutoencoder(SAEConfig(d_in=512, dict_size=args.dict)), l1, 1e-3)
        train_steps(stepper, source, args.steps, 4096)
        stepper.grads(batches[0], sparse=False)
        t = interleaved({"dense": our_step_fn(stepper, batches, False),
                         "sparse": our_step_fn(stepper, batches, True)}, args.reps)
        print(f"FIGURE l1={l1:g} density={stepper.density:.3f} dense={4096 / t['dense']:.0f} "
              f"sparse={4096 / t['sparse']:.0f} tokens/s (sparse/dense {t['dense'] / t['sparse']:.2f})")


if __name__ == "__main__":
    main()
