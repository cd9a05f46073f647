#!/usr/bin/env python3
"""Steps, seconds and ground-truth recovery of SAEs trained until converged, for init/schedule variants.

The synthetic default at 120k rows (d 48, 96 true directions); m = 96; the variants of one architecture
train in one pass. Prints one markdown table row per variant (the table in docs/sae.md).

    .venv/bin/python bench/sae_convergence.py topk|batchtopk|tied|untied [--l1 5e-3] [--k 4] [--n 262144]
        [--seed 1] [--only "b_dec 0,b_dec mean"]

--seed sets the SAEs' initial dictionaries (the data stay the same); --only keeps the named variants.
"""

from __future__ import annotations

import argparse

from rlhf_lens.sae import SAEConfig, TensorSource, train_saes
from rlhf_lens.synthetic import SyntheticConfig, make_synthetic, recovery


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arch")
    p.add_argument("--l1", type=float, default=5e-3)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--n", type=int, default=120_000)
    p.add_argument("--seed", type=int, default=0, help="the SAEs' seed")
    p.add_argument("--only", default="", help="comma-separated variant names to train (default: all)")
    args = p.parse_args()
    acts, truth = make_synthetic(SyntheticConfig(n=args.n))
    base: dict = dict(d_in=48, dict_size=96, arch=args.arch, seed=args.seed)
    if args.arch in ("topk", "batchtopk"):
        base["k"] = args.k
    else:
        base["l1"] = args.l1
    variants = {"b_dec 0": dict(b_dec_init="zero"), "b_dec mean": dict(b_dec_init="mean"),
                "b_dec mean + lr warm-up 200": dict(b_dec_init="mean", lr_warmup=200),
                "b_dec mean + lr cool-down 1000": dict(b_dec_init="mean", lr_decay=1000)}
    if args.arch in ("tied", "untied"):
        variants["b_dec mean + l1 warm-up 500"] = dict(b_dec_init="mean", l1_warmup=500)
    if args.only:
        keep = [name.strip() for name in args.only.split(",")]
        unknown = [name for name in keep if name not in variants]
        if unknown:
            raise SystemExit(f"--only: unknown variant(s) {unknown}; choose from {list(variants)}")
        variants = {name: variants[name] for name in keep}
    saes = train_saes(TensorSource(acts), [SAEConfig(**base, **v) for v in variants.values()], None, quiet=True)
    print(f"| arch | variant (n {args.n}, seed {args.seed}) | steps | seconds | stop | held-out FVU | held-out L0 | recovered | gt MMCS | resampled |")
    for name, sae in zip(variants, saes):
        m = sae.metrics
        r = recovery(sae, truth)["dictionary"]
        print(f"| {args.arch} | {name} | {m['steps']} | {m['train_seconds']:.1f} | {m['stop_reason']} | "
              f"{m['heldout_fvu']:.3f} | {m['heldout_l0']:.2f} | {r['recovered']}/{truth.shape[0]} | "
              f"{r['gt_mmcs']:.3f} | {m['resampled']} |")


if __name__ == "__main__":
    main()
