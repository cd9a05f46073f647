#!/usr/bin/env python3
"""SAE training throughput (tokens/s) beside the matmul-bound limit for the same shapes, in one run.

For each dictionary size m (default d=512, m=1024 and 2048, batch 4096: Pythia-70m's sizes):

  bound        the five GEMMs of one dense SAE step (x W^T, f W, f^T g, g W^T, dpre^T x), timed back to
               back into preallocated outputs; B / t(chain) is the matmul-bound tokens/s of a dense step.
  dense        our training step (hand-written backward + fused Adam) forced onto its dense path.
  trained      our step with its automatic path, from a trained state where the codes are sparse
               (warm-up: --warmup-steps steps of batch --warmup-batch on the same data); the sparse path
               can pass the dense bound since only x W^T stays a dense GEMM.
  eager        a plain eager-PyTorch step (autograd + Adam) of the same tied SAE, for reference.
  topk         our step of a TopK SAE (k = --k), automatic path: its code density is k/m from the first
               step, so it takes the sparse path (no trained state needed).
  batchtopk    the same for BatchTopK (k * batch codes per batch; one top-k over the flattened batch).
  end-to-end   `train_saes` over --e2e-epochs epochs from initialisation (data shuffling, statistics,
               checkpoints excluded), 1x and 2x dictionaries in one pass; tokens/s per SAE from metrics.json.

With --anchors, also runs bench/anchor_saelens.py (SAELens's trainer on its StandardTrainingSAE, and on its
TopKTrainingSAE and BatchTopKTrainingSAE with k = --k; in the venv `make anchors` builds) and
bench/anchor_gemm_bound.py (the five GEMMs timed by a script of its own) on the same activations and shapes, so
the figures share one machine state, then prints a SUMMARY block:
for tied, topk and batchtopk at each m, ours, SAELens's and their ratio. Ours for tied is the end-to-end
`train_saes` figure (a trainer from initialisation against SAELens's `fit()` from initialisation, both with
dense codes and their per-step bookkeeping; the dense-path step is printed beside it); ours for topk/batchtopk
is the step figure above (gradients + Adam) against SAELens's `fit()` (which adds its per-step bookkeeping:
firing counts, grad-clip, schedulers). Without the anchors' venv, --anchors stops at once with one line
naming `make anchors` (docs/anchors.md).

Data: --acts FILE (safetensors, key `activations`) or synthetic (d, 4d features, firing probability 0.005,
65536 rows; like the anchors' data). Each figure is printed as `FIGURE name=value unit`.

    .venv/bin/python bench/bench_sae.py                # full (~5 min on 2 cores)
    .venv/bin/python bench/bench_sae.py --quick        # small settings, a smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from anchor_venv import missing_line
from rlhf_lens.sae import SAEConfig, SparseAutoencoder, TensorSource, train_saes
from rlhf_lens.sae.step import Stepper
from rlhf_lens.synthetic import SyntheticConfig, write_synthetic

BENCH = Path(__file__).resolve().parent
TARGET_RATIO = 1.5
"""Issue target: ours >= 1.5x SAELens's trainer."""


def bench_data(d: int, n: int, seed: int = 0) -> SyntheticConfig:
    """The benches' synthetic activations: d dims, 4d features, each firing with probability 0.005."""
    return SyntheticConfig(d=d, features=4 * d, sparsity=0.005, n=n, seed=seed)


def train_steps(stepper: Stepper, source: TensorSource, steps: int, batch: int) -> int:
    """Train `steps` steps of `batch` rows (data seed 1) to reach a trained state; returns the steps done."""
    done = 0
    while done < steps:
        for x in source.batches(batch, 1, done):
            stepper.step(x)
            done += 1
            if done >= steps:
                break
    return done


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def gemm_chain_fn(batch: int, d: int, m: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The five GEMMs of one dense step, into preallocated outputs (same transposed views as a real step)."""
    new = {"device": device, "dtype": dtype}
    x, w = torch.randn(batch, d, **new), torch.randn(m, d, **new) / d**0.5
    f, g, dpre = torch.relu(torch.randn(batch, m, **new)), torch.randn(batch, d, **new), torch.randn(batch, m, **new)
    o_bm, o_bd, o_md, o_bm2, o_md2 = (torch.empty(batch, m, **new), torch.empty(batch, d, **new),
                                      torch.empty(m, d, **new), torch.empty(batch, m, **new), torch.empty(m, d, **new))

    def chain():
        torch.mm(x, w.t(), out=o_bm)
        torch.mm(f, w, out=o_bd)
        torch.mm(f.t(), g, out=o_md)
        torch.mm(g, w.t(), out=o_bm2)
        torch.mm(dpre.t(), x, out=o_md2)

    return chain


def eager_step_fn(x: torch.Tensor, m: int):
    """A plain eager-PyTorch step of the same tied SAE (autograd + Adam)."""
    d = x.shape[1]
    w = torch.nn.Parameter(torch.randn(m, d) / d**0.5)
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(m)), torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([w, b_enc, b_dec], lr=1e-3)

    def step():
        wn = w / w.norm(dim=1, keepdim=True)
        f = torch.relu(x @ wn.t() + b_enc)
        loss = (f @ wn + b_dec - x).pow(2).mean() + 1e-3 * f.sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def our_step_fn(stepper: Stepper, batches: list[torch.Tensor], sparse: bool | None):
    """One full step of ours (gradients + Adam) on the next batch; sparse=None: the automatic path."""
    counter = iter(range(10**9))

    def step():
        stepper.grads(batches[next(counter) % len(batches)], sparse=sparse)
        stepper.opt.step()

    return step


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median time of each function, timed in turn within every rep, so all see the same machine state."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: median(ts) for name, ts in times.items()}


def run_anchor(script: str, args: list[str]) -> str:
    """Run a bench/anchor_*.py script (it enters its own venv); its FIGURE and key INFO lines, or why it failed."""
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True)
    keep = ("FIGURE", "INFO runtime", "INFO after", "INFO elapsed", "INFO shape")
    lines = [line for line in result.stdout.splitlines() if line.startswith(keep)]
    if result.returncode != 0:
        return f"(anchor failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]})"
    return "\n".join(lines)


def note_anchor(figures: dict, key: tuple[str, int], out: str | None) -> None:
    """Record the tokens/s of an anchor's FIGURE line (absent if the anchor failed)."""
    match = re.search(r"^FIGURE \S+=([0-9.]+) tokens/s", out or "", re.M)
    if match:
        figures[key] = float(match.group(1))


def summary(figures: dict, dicts: list[int], k: int) -> None:
    """Ours beside SAELens's trainer, same run, per architecture and m; ratio and the issue's 1.5x target."""
    rows = [("tied", "ours_e2e", "e2e", "saelens_standard"),
            ("tied", "ours_dense (step)", "dense", "saelens_standard"),
            (f"topk k{k}", f"ours_topk{k} (step)", "topk", "saelens_topk"),
            (f"batchtopk k{k}", f"ours_batchtopk{k} (step)", "batchtopk", "saelens_batchtopk")]
    print(f"SUMMARY tokens/s, one run; SAELens = its SAETrainer.fit() (standard / TopK / BatchTopK training SAE); "
          f"target ours >= {TARGET_RATIO}x SAELens")
    print(f"SUMMARY {'arch':<14} {'m':>5} {'ours figure':<22} {'ours':>9} {'SAELens':>9} {'ratio':>6}  target")
    for arch, label, ours_key, theirs_key in rows:
        for m in dicts:
            ours, theirs = figures.get((ours_key, m)), figures.get((theirs_key, m))
            if ours is None or theirs is None:
                print(f"SUMMARY {arch:<14} {m:>5} {label:<22} {ours or float('nan'):>9.0f} {'n/a':>9}")
                continue
            ratio = ours / theirs
            print(f"SUMMARY {arch:<14} {m:>5} {label:<22} {ours:>9.0f} {theirs:>9.0f} {ratio:>6.2f}  "
                  f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--dicts", default="1024,2048", help="comma-separated dictionary sizes")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--acts", default=None, help="safetensors file with key 'activations' (default: synthetic)")
    p.add_argument("--n", type=int, default=65536, help="synthetic rows")
    p.add_argument("--reps", type=int, default=10, help="timed steps per figure (median)")
    p.add_argument("--warmup-steps", type=int, default=400, help="training steps before the 'trained' figure")
    p.add_argument("--warmup-batch", type=int, default=256)
    p.add_argument("--e2e-epochs", type=int, default=1)
    p.add_argument("--k", type=int, default=32, help="k of the topk and batchtopk rows")
    p.add_argument("--anchors", action="store_true",
                   help="also run SAELens's trainer and the GEMM-bound anchor side by side (needs `make anchors`)")
    p.add_argument("--quick", action="store_true", help="small settings: d=128, m=256,512, batch 1024, few reps")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.anchors and (problem := missing_line("saelens")):
        sys.exit(problem)  # before minutes of our own timings, not after
    if args.quick:
        args.d, args.dicts, args.batch, args.n, args.reps, args.warmup_steps = 128, "256,512", 1024, 8192, 4, 100
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("RLHF_LENS_QUIET", "1")
    dicts = [int(v) for v in args.dicts.split(",")]
    print(f"INFO torch={torch.__version__} threads={torch.get_num_threads()} cpus={os.cpu_count()}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-sae-"))
    if args.acts:
        acts_path = Path(args.acts)
        source = TensorSource(acts_path)
    else:
        acts_path = write_synthetic(bench_data(args.d, args.n), tmp / "acts.safetensors")
        source = TensorSource(acts_path)
    d, batch = source.d, args.batch
    print(f"INFO data={acts_path} rows={source.n} d={d} batch={batch}")
    batches = [x for x, _ in zip(source.batches(batch, 0, 0), range(4))]
    figures: dict[tuple[str, int], float] = {}  # (name, m) -> tokens/s, for the summary

    for m in dicts:
        # a trained state: sparse codes (the paper's l1 on these data), reached with small batches
        warm = SparseAutoencoder(SAEConfig(d_in=d, dict_size=m))
        warm_stepper = Stepper(warm, 1e-3, 1e-3)
        done = train_steps(warm_stepper, source, args.warmup_steps, args.warmup_batch)
        warm_stepper.grads(batches[0], sparse=False)  # the density at the full batch decides the path
        density = warm_stepper.density
        fresh = Stepper(SparseAutoencoder(SAEConfig(d_in=d, dict_size=m)), 1e-3, 1e-3)
        ranked = {arch: Stepper(SparseAutoencoder(SAEConfig(d_in=d, dict_size=m, arch=arch, k=args.k)), 0.0, 1e-3)
                  for arch in ("topk", "batchtopk")}
        t = interleaved({"bound": gemm_chain_fn(batch, d, m), "dense": our_step_fn(fresh, batches, False),
                         "trained": our_step_fn(warm_stepper, batches, None),
                         "eager": eager_step_fn(batches[0], m),
                         "topk": our_step_fn(ranked["topk"], batches, None),
                         "batchtopk": our_step_fn(ranked["batchtopk"], batches, None)}, args.reps)
        bound = batch / t["bound"]
        print(f"INFO m={m} gemm chain {1e3 * t['bound']:.1f} ms "
              f"({5 * 2 * batch * d * m / t['bound'] / 1e9:.1f} GFLOP/s); trained state after {done} steps of "
              f"{args.warmup_batch}: code density {density:.3f} (L0 {density * m:.1f})")
        print(f"FIGURE sae_matmul_bound_m{m}_tokens_per_s={bound:.1f} tokens/s")
        figures[("bound", m)] = bound
        for name in ("dense", "trained", "eager", "topk", "batchtopk"):
            label = {"dense": "ours_dense", "trained": "ours_trained", "eager": "eager_torch",
                     "topk": f"ours_topk{args.k}", "batchtopk": f"ours_batchtopk{args.k}"}[name]
            print(f"FIGURE {label}_m{m}_tokens_per_s={batch / t[name]:.1f} tokens/s "
                  f"({100 * t['bound'] / t[name]:.0f}% of bound)")
            figures[(name, m)] = batch / t[name]

    # end to end: 1x and 2x trained in one pass over the data, from initialisation
    configs = [SAEConfig(d_in=d, dict_size=m, epochs=args.e2e_epochs, batch_size=batch, holdout=0) for m in dicts]
    saes = train_saes(source, configs, None, quiet=True)
    for m, sae in zip(dicts, saes):
        metrics = sae.metrics
        print(f"INFO e2e m={m}: L0 {metrics['mean_l0']:.1f} fvu {metrics['fvu']:.3f} "
              f"after {metrics['tokens_seen']} tokens")
        print(f"FIGURE ours_e2e_m{m}_tokens_per_s={metrics['tokens_per_s']:.1f} tokens/s")
        figures[("e2e", m)] = metrics["tokens_per_s"]

    if args.anchors:
        threads = ["--threads", str(args.threads)] if args.threads else []
        for m in dicts:
            steps = "100" if m <= 1024 else "50"
            for arch in ("standard", "topk", "batchtopk"):
                if arch == "standard":
                    steps = "100" if m <= 1024 else "50"
                else:
                    steps = "40" if m <= 1024 else "25"
                out = run_anchor("anchor_saelens.py", ["--arch", arch, "--acts", str(acts_path), "--dict", str(m),
                                                       "--batch", str(batch), "--k", str(args.k), "--steps", steps,
                                                       *threads])
                print(f"ANCHOR saelens {arch} m={m}:\n{out}")
                note_anchor(figures, (f"saelens_{arch}", m), out)
            out = run_anchor("anchor_gemm_bound.py", ["--d", str(d), "--dict", str(m), "--batch", str(batch), *threads])
            print(f"ANCHOR gemm bound m={m}:\n{out}")
        summary(figures, dicts, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
