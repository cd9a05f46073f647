#!/usr/bin/env python3
"""SAELens anchor: training tokens/s of SAELens's own trainer on a file of activations.

The SAE is one of SAELens's training classes, with its defaults but the size, k and the L1 weight:

    standard   `StandardTrainingSAE` (ReLU codes, L1 penalty on codes weighted by decoder-row norms)
    topk       `TopKTrainingSAE` (k active latents per row; dense code tensors, SAELens's default)
    batchtopk  `BatchTopKTrainingSAE` (k * batch active latents per batch, and a running threshold)

The trainer is SAELens's `SAETrainer` (Adam 0.9/0.999, constant lr, grad-norm clip 1.0, firing and
dead-latent counts, coefficient schedulers; no wandb, no checkpoints, fp32 on the CPU). Its `data_provider`
is any iterator of raw `[batch, d]` tensors, so this script hands it consecutive row blocks of the file,
wrapping around: the timing holds SAELens's training and nothing of its activation store or model hooks.
After `--warmup` untimed `trainer.step` calls (the first steps pay for allocation), it times either

    --mode fit   `trainer.fit()` for `--steps` more steps: the whole loop a SAELens user runs (default);
    --mode step  a loop of `trainer.step(batch)`: the same work without fit()'s per-step loop checks.

Runs in the SAELens anchors' venv (`make anchors`, bench/anchor_venv.py); any python3 can start it.

    python3 bench/anchor_saelens.py --arch topk --acts acts.safetensors --dict 1024 --batch 4096 --k 32

Prints INFO lines, then `FIGURE saelens_<arch>_m<dict>_tokens_per_s=<x> tokens/s` last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from anchor_venv import enter, runtime_line

ARCHS = ("standard", "topk", "batchtopk")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--arch", choices=ARCHS, default="standard", help="which SAELens training SAE")
    p.add_argument("--acts", required=True, help="safetensors file with an 'activations' tensor [rows, d]")
    p.add_argument("--dict", type=int, default=1024, dest="m", help="dictionary size m")
    p.add_argument("--batch", type=int, default=4096, help="rows per training step")
    p.add_argument("--k", type=int, default=32, help="active latents per row (topk; batchtopk: on average)")
    p.add_argument("--l1", type=float, default=1.0, help="L1 weight of the standard SAE (SAELens's default 1.0)")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones")
    p.add_argument("--mode", choices=("fit", "step"), default="fit", help="time trainer.fit() or trainer.step()")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = p.parse_args()
    for flag, value in (("--dict", args.m), ("--batch", args.batch), ("--k", args.k), ("--steps", args.steps)):
        if value < 1:
            p.error(f"{flag} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    return args


def load_rows(path: str, batch: int):
    """The file's activations as one float32 [rows, d] tensor; one line and exit on a bad file."""
    import torch
    from safetensors import safe_open

    if not os.path.isfile(path):
        sys.exit(f"error: no activation file {path}: pass a safetensors file with an 'activations' tensor")
    with safe_open(path, framework="pt") as f:
        if "activations" not in f.keys():
            sys.exit(f"error: {path} has no 'activations' tensor (it has {sorted(f.keys())})")
        rows = f.get_tensor("activations")
    if rows.ndim != 2 or rows.shape[0] < batch:
        sys.exit(f"error: {path}: 'activations' has shape {list(rows.shape)}; need [rows, d] with rows >= "
                 f"--batch {batch}")
    rows = rows.to(torch.float32).contiguous()
    if not torch.isfinite(rows).all():
        sys.exit(f"error: {path}: 'activations' holds NaN or infinite values")
    return rows


def cycle_blocks(rows, batch: int):
    """Consecutive [batch, d] views of rows, wrapping around after the last whole block (no copies)."""
    blocks = rows.shape[0] // batch
    i = 0
    while True:
        yield rows[i * batch:(i + 1) * batch]
        i = (i + 1) % blocks


def build_sae(arch: str, d: int, args: argparse.Namespace):
    if arch == "standard":
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

        return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=args.m, l1_coefficient=args.l1))
    if arch == "topk":
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=args.m, k=args.k))
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=args.m, k=args.k))


def main() -> int:
    args = parse_args()
    enter("saelens", ("torch", "safetensors", "sae_lens"))
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    print(runtime_line())
    rows = load_rows(args.acts, args.batch)
    n, d = rows.shape
    torch.manual_seed(args.seed)
    sae = build_sae(args.arch, d, args)
    blocks = cycle_blocks(rows, args.batch)
    config = SAETrainerConfig(total_training_samples=(args.warmup + args.steps) * args.batch,
                              train_batch_size_samples=args.batch, lr=args.lr, lr_end=args.lr, device="cpu",
                              logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=config, sae=sae, data_provider=blocks)
    print(f"INFO sae={type(sae).__name__} data={args.acts} rows={n} d={d} dict={args.m} batch={args.batch} "
          f"k={args.k if args.arch != 'standard' else '-'} warmup={args.warmup} steps={args.steps} mode={args.mode} "
          f"rescale_acts_by_decoder_norm={getattr(sae.cfg, 'rescale_acts_by_decoder_norm', '-')}")

    for _ in range(args.warmup):  # fit() counts its own steps; a step outside it must be counted by hand
        trainer.step(next(blocks))
        trainer.n_training_steps += 1
    started = time.perf_counter()
    if args.mode == "fit":
        trainer.fit()
    else:
        for _ in range(args.steps):
            trainer.step(next(blocks))
            trainer.n_training_steps += 1
    elapsed = time.perf_counter() - started
    timed = trainer.n_training_steps - args.warmup
    if timed != args.steps:
        sys.exit(f"error: SAELens's trainer ran {timed} timed steps, not {args.steps}: this sae-lens does not "
                 f"count steps as 6.54 does (bench/anchors-saelens.txt pins the version the figures used)")

    with torch.no_grad():  # a sanity line: a short run does not converge, but the codes must be sparse-ish
        x = rows[:args.batch]
        codes = sae.encode(x)
        fvu = ((sae.decode(codes) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        l0 = (codes != 0).float().sum(-1).mean().item()
    print(f"INFO after {trainer.n_training_steps} steps: first block fvu={fvu:.4f} l0={l0:.2f} "
          f"dead={int(trainer.dead_neurons.sum())}")
    print(f"INFO elapsed_s={elapsed:.3f} step_ms={1000 * elapsed / timed:.2f}")
    print(f"FIGURE saelens_{args.arch}_m{args.m}_tokens_per_s={timed * args.batch / elapsed:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
