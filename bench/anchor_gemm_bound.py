#!/usr/bin/env python3
"""GEMM-bound anchor: the tokens/s no dense SAE training step can beat on this machine.

One dense step of an SAE with input rows x [B, d], encoder [d, m] and decoder [m, d] multiplies five pairs of
matrices, each 2·B·d·m floating-point operations:

    forward   x @ W_enc        codes' pre-activations          [B, d] x [d, m]
              f @ W_dec        reconstruction                  [B, m] x [m, d]
    backward  f^T @ g          decoder gradient                [m, B] x [B, d]
              g @ W_dec^T      gradient reaching the codes     [B, d] x [d, m]
              x^T @ g_pre      encoder gradient                [d, B] x [B, m]

(no gradient flows back into x). Everything else in a step (ReLU or top-k, the loss, the optimizer) reads
and writes memory once or twice per element and costs far less on a CPU. So B / t(five GEMMs) bounds the
tokens/s of any dense step, ours or SAELens's, and a trainer's figure divided by it says how much of the
machine it uses. The GEMMs are timed singly and back to back, into preallocated outputs, with the transposed
operands as autograd passes them; the median over repetitions within `--seconds`.

Needs only torch and imports nothing of rlhf-lens, so it checks `bench_sae.py`'s own bound independently;
bench/bench_sae.py --anchors runs it with the project's Python.

    python bench/anchor_gemm_bound.py --d 512 --dict 1024 --batch 4096

Prints INFO lines, then `FIGURE gemm_bound_m<dict>_tokens_per_s=<x> tokens/s` last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--d", type=int, default=512, help="input width d")
    p.add_argument("--dict", type=int, default=1024, dest="m", help="dictionary size m")
    p.add_argument("--batch", type=int, default=4096, help="rows per step B")
    p.add_argument("--seconds", type=float, default=12.0, help="timing budget, split over the six timings")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for flag, value in (("--d", args.d), ("--dict", args.m), ("--batch", args.batch)):
        if value < 1:
            p.error(f"{flag} must be at least 1")
    if not args.seconds > 0:
        p.error("--seconds must be above 0")
    return args


def median_seconds(fn, budget: float, least: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() over as many calls as fit in `budget` seconds (at least `least`)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    stop = time.perf_counter() + budget
    while len(times) < least or time.perf_counter() < stop:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    b, d, m = args.batch, args.d, args.m
    print(f"INFO runtime torch={torch.__version__} threads={torch.get_num_threads()}")
    x, g, f = torch.randn(b, d), torch.randn(b, d), torch.relu(torch.randn(b, m))
    g_pre = torch.randn(b, m)
    w_enc, w_dec = torch.randn(d, m) / d**0.5, torch.randn(m, d) / m**0.5
    out = {"pre": torch.empty(b, m), "recon": torch.empty(b, d), "grad_dec": torch.empty(m, d),
           "grad_codes": torch.empty(b, m), "grad_enc": torch.empty(d, m)}
    gemms = {
        "pre = x @ W_enc": lambda: torch.mm(x, w_enc, out=out["pre"]),
        "recon = f @ W_dec": lambda: torch.mm(f, w_dec, out=out["recon"]),
        "grad_dec = f^T @ g": lambda: torch.mm(f.t(), g, out=out["grad_dec"]),
        "grad_codes = g @ W_dec^T": lambda: torch.mm(g, w_dec.t(), out=out["grad_codes"]),
        "grad_enc = x^T @ g_pre": lambda: torch.mm(x.t(), g_pre, out=out["grad_enc"]),
    }
    flops = 2.0 * b * d * m
    slot = args.seconds / 6  # five single GEMMs, then the chain
    for name, fn in gemms.items():
        t = median_seconds(fn, slot)
        print(f"INFO gemm {name:<26} {1e3 * t:9.3f} ms  {flops / t / 1e9:7.1f} GFLOP/s")

    def chain() -> None:
        for fn in gemms.values():
            fn()

    t = median_seconds(chain, slot)
    print(f"INFO shape B={b} d={d} m={m}; five GEMMs {1e3 * t:.2f} ms, {5 * flops / t / 1e9:.1f} GFLOP/s")
    print(f"FIGURE gemm_bound_m{m}_tokens_per_s={b / t:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
