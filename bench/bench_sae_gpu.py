#!/usr/bin/env python3
"""The paper's SAE grid on a GPU, as one command: tokens/s per SAE and the wall time of the whole grid.

The grid has the shapes of the paper's Pythia-70m runs: width d 512, dictionaries 512 and 1024 (1x and 2x), 5 blocks
x 2 models (base, tuned) x 3 seeds = 60 SAEs, each trained 3 epochs over 6.4M tokens of its (model, block)'s
activations (the paper's tied ReLU SAE, l1 1e-3, Adam lr 1e-3). The activations are synthetic (`make_synthetic` drawn
on the GPU: 4d true directions, each on with probability 0.005), one draw per (model, block), generated on the device
and kept there; generating them is timed apart. The 6 SAEs of a (model, block) train in one pass over its data
(`train_saes`, as the pipeline does), so the grid is 10 passes.

Beside it, the anchor for one step (d 512, m = each dictionary size, the grid's batch): the five GEMMs of a dense step
chained (the matmul bound, in the step's dtype) and our step, timed with CUDA events.

    python bench/bench_sae_gpu.py                          # the whole grid, float32 then bfloat16, on cuda
    python bench/bench_sae_gpu.py --dtypes float32 --batch 256
    python bench/bench_sae_gpu.py --device cpu --quick     # a dry run of the script (figures say nothing of a GPU)

Each figure is printed as `FIGURE name=value unit`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from bench_sae import bench_data, gemm_chain_fn
from rlhf_lens.sae import SAEConfig, SparseAutoencoder, TensorSource, train_saes
from rlhf_lens.sae.step import Stepper
from rlhf_lens.synthetic import make_synthetic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int, warmup: int = 3) -> float:
    """Seconds per call: the mean of `reps` calls after `warmup` (one sync at each end: calls queue back to back)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def step_figures(args, dtype: str) -> None:
    """Our step against the matmul bound of its five GEMMs, per dictionary size."""
    x = make_synthetic(bench_data(args.d, args.batch, seed=99), device=args.device)[0]
    for m in args.dicts:
        bound = timed(gemm_chain_fn(args.batch, args.d, m, args.device, DTYPES[dtype]), args.device, args.reps)
        sae = SparseAutoencoder(SAEConfig(d_in=args.d, dict_size=m, dtype=dtype)).to(args.device)
        stepper = Stepper(sae, 1e-3, 1e-3)
        ours = timed(lambda stepper=stepper: stepper.step(x), args.device, args.reps)
        flops = 5 * 2 * args.batch * args.d * m
        print(f"INFO {dtype} m={m} batch={args.batch}: gemm chain {1e3 * bound:.3f} ms "
              f"({flops / bound / 1e12:.1f} TFLOP/s), our step {1e3 * ours:.3f} ms")
        print(f"FIGURE gpu_matmul_bound_{dtype}_m{m}_tokens_per_s={args.batch / bound:.0f} tokens/s")
        print(f"FIGURE gpu_ours_step_{dtype}_m{m}_tokens_per_s={args.batch / ours:.0f} tokens/s "
              f"({100 * bound / ours:.0f}% of bound)")


def grid(args, dtype: str) -> None:
    """Every (model, block): draw its activations on the device, train its dictionaries x seeds in one pass."""
    start = time.perf_counter()
    generate = train = 0.0
    sae_tokens = 0
    per_size: dict[int, list[float]] = {m: [] for m in args.dicts}
    fvu: dict[int, list[float]] = {m: [] for m in args.dicts}
    for model in range(args.models):
        for block in range(args.blocks):
            t0 = time.perf_counter()
            synthetic = bench_data(args.d, args.tokens, seed=1000 * model + block)
            source = TensorSource(make_synthetic(synthetic, device=args.device)[0])
            sync(args.device)
            t1 = time.perf_counter()
            configs = [SAEConfig(d_in=args.d, dict_size=m, arch=args.arch, k=args.k, l1=1e-3, lr=1e-3,
                                 epochs=args.epochs, holdout=0, batch_size=args.batch, seed=seed,
                                 device=args.device, dtype=dtype)
                       for m in args.dicts for seed in range(args.seeds)]
            saes = train_saes(source, configs, None, quiet=True, eval_tokens=args.eval_tokens)
            sync(args.device)
            t2 = time.perf_counter()
            generate += t1 - t0
            train += t2 - t1
            for cfg, sae in zip(configs, saes):
                per_size[cfg.dict_size].append(sae.metrics["tokens_per_s"])
                fvu[cfg.dict_size].append(sae.metrics["fvu"])
                sae_tokens += sae.metrics["tokens_seen"]
            del source, saes
            print(f"INFO {dtype} model {model} block {block}: {len(configs)} SAEs in {t2 - t1:.1f} s "
                  f"(activations drawn in {t1 - t0:.1f} s)", flush=True)
    wall = time.perf_counter() - start
    n_saes = args.models * args.blocks * len(args.dicts) * args.seeds
    print(f"INFO {dtype} grid: {n_saes} SAEs, {args.tokens} tokens x {args.epochs} epochs each, batch {args.batch}, "
          f"arch {args.arch}; training {train:.1f} s, drawing activations {generate:.1f} s")
    for m in args.dicts:
        rates = sorted(per_size[m])
        print(f"INFO {dtype} m={m}: FVU {min(fvu[m]):.3f}-{max(fvu[m]):.3f}; "
              f"tokens/s per SAE (its own GPU step time) median {rates[len(rates) // 2]:.0f}")
        print(f"FIGURE gpu_grid_{dtype}_m{m}_tokens_per_s_per_sae={rates[len(rates) // 2]:.0f} tokens/s")
    print(f"FIGURE gpu_grid_{dtype}_sae_tokens_per_s={sae_tokens / train:.0f} tokens/s (all SAEs, training wall time)")
    print(f"FIGURE gpu_grid_{dtype}_train_wall_s={train:.1f} s")
    print(f"FIGURE gpu_grid_{dtype}_wall_s={wall:.1f} s (with drawing the activations)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--dicts", default="512,1024")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=6_400_000, help="activations per (model, block)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4096, help="tokens per step (the paper gives none)")
    p.add_argument("--arch", default="tied")
    p.add_argument("--k", type=int, default=None, help="k for --arch topk / batchtopk")
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--reps", type=int, default=50, help="timed calls per step figure")
    p.add_argument("--no-grid", action="store_true", help="only the step figures")
    p.add_argument("--quick", action="store_true", help="small settings: d 64, dicts 64,128, 1 model x 2 blocks x 2 "
                   "seeds, 65536 tokens, batch 1024")
    args = p.parse_args()
    if args.quick:
        args.d, args.dicts, args.blocks, args.models, args.seeds = 64, "64,128", 2, 1, 2
        args.tokens, args.batch, args.reps, args.eval_tokens = 65536, 1024, 5, 8192
    args.dicts = [int(v) for v in args.dicts.split(",")]
    os.environ.setdefault("RLHF_LENS_QUIET", "1")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device here; use --device cpu for a dry run", file=sys.stderr)
            return 1
        print(f"INFO torch={torch.__version__} device={torch.cuda.get_device_name(0)} "
              f"tf32={torch.backends.cuda.matmul.allow_tf32}")
    else:
        print(f"INFO torch={torch.__version__} device={args.device} threads={torch.get_num_threads()}")
    for dtype in args.dtypes.split(","):
        step_figures(args, dtype)
        if not args.no_grid:
            grid(args, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
