#!/usr/bin/env python3
"""SAELens anchor for TopK and BatchTopK: training tokens/s of SAELens's own trainer on fixed activations.

The shared anchor (../shared/anchors/saelens_sae_throughput.py) times only SAELens's StandardTrainingSAE
(ReLU + L1). This script does the same for `TopKTrainingSAE` and `BatchTopKTrainingSAE` (sae-lens 6.x):
an `SAETrainer` whose `data_provider` cycles over contiguous `[batch, d]` slices of one in-memory tensor
(how `sae_lens.synthetic.training.train_toy_sae` drives it), warm-up steps with `trainer.step`, then

    --mode fit  (default) time `trainer.fit()` for --steps steps: SAELens's full loop (forward, top-k,
                loss, auxiliary-k loss when latents are dead, backward, grad-clip 1.0, Adam, LR scheduler,
                firing/dead-latent bookkeeping; BatchTopK also updates its running threshold) plus fit()'s
                per-step sparsity-window and checkpoint checks (no checkpoint is written: n_checkpoints 0).
    --mode step time a loop over `trainer.step(batch)` (the same work minus fit()'s loop bookkeeping).

SAE settings are SAELens's defaults but k: fp32, `rescale_acts_by_decoder_norm` True, dense codes
(`use_sparse_activations` False: with True, sae-lens 6.54.12's TopK backward fails on CPU under torch 2.13,
NotImplementedError "aten::view ... SparseCPU"), aux_loss_coefficient 1.0,
decoder_init_norm 0.1, apply_b_dec_to_input, no activation normalisation; trainer: Adam(0.9, 0.999),
lr 3e-4 constant, dead_feature_window 1000 (so no latent is dead, and the auxiliary loss is skipped,
within a short timing run), no wandb, no autocast.

Runs under the anchors venv: it starts with ../shared/anchors/_bootstrap.ensure_venv(), which re-executes
it under $ANCHORS_VENV (default /tmp/anchors; created first if missing), so any python3 can start it.

    python3 bench/saelens_arch_anchor.py --arch topk --acts acts.safetensors --dict 1024 --batch 4096 --k 32
Final line: FIGURE saelens_<arch>_m<dict>_tokens_per_s=<x> tokens/s
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ANCHORS = Path(os.environ.get("ANCHORS_DIR", Path(__file__).resolve().parents[2] / "shared" / "anchors"))
sys.path.insert(0, str(ANCHORS))
import _bootstrap  # noqa: E402

if __name__ == "__main__":
    _bootstrap.ensure_venv()

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402


def batches(acts, batch: int):
    """Endless iterator of contiguous [batch, d] views of acts (no copies), as the shared anchor feeds them."""
    n_batches = acts.shape[0] // batch
    i = 0
    while True:
        yield acts[i * batch:(i + 1) * batch]
        i = (i + 1) % n_batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("topk", "batchtopk"), required=True)
    p.add_argument("--acts", required=True, help="safetensors file with key 'activations' [N, d]")
    p.add_argument("--dict", type=int, default=1024, dest="d_sae", help="dictionary size m")
    p.add_argument("--batch", type=int, default=4096, help="training batch (tokens per step)")
    p.add_argument("--k", type=int, default=32, help="active latents per token (BatchTopK: on average)")
    p.add_argument("--steps", type=int, default=50, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps")
    p.add_argument("--mode", choices=("fit", "step"), default="fit")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors import safe_open

    print(_bootstrap.describe_runtime())
    if not os.path.isfile(args.acts):
        sys.exit(f"error: activation file not found: {args.acts}")
    with safe_open(args.acts, framework="pt") as fh:
        if "activations" not in set(fh.keys()):
            sys.exit(f"error: {args.acts} has no 'activations' tensor")
        acts = fh.get_tensor("activations").float().contiguous()
    n, d = acts.shape
    if n < args.batch:
        sys.exit(f"error: {n} activation rows < one batch of {args.batch}")

    torch.manual_seed(args.seed)
    if args.arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=args.d_sae, k=args.k))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=args.d_sae, k=args.k))
    total_steps = args.warmup + args.steps
    trainer = SAETrainer(
        cfg=SAETrainerConfig(total_training_samples=total_steps * args.batch, train_batch_size_samples=args.batch,
                             lr=args.lr, lr_end=args.lr, device="cpu", logger=LoggingConfig(log_to_wandb=False)),
        sae=sae, data_provider=(provider := batches(acts, args.batch)))
    print(f"INFO sae={type(sae).__name__} arch={args.arch} k={args.k} data={args.acts} rows={n} d={d} "
          f"dict={args.d_sae} batch={args.batch} warmup={args.warmup} steps={args.steps} mode={args.mode} "
          f"rescale_acts_by_decoder_norm={sae.cfg.rescale_acts_by_decoder_norm}")

    for _ in range(args.warmup):  # the bookkeeping fit() does around step()
        trainer.step(next(provider))
        trainer.n_training_steps += 1

    t0 = time.perf_counter()
    if args.mode == "fit":
        trainer.fit()
    else:
        for _ in range(args.steps):
            trainer.step(next(provider))
            trainer.n_training_steps += 1
    elapsed = time.perf_counter() - t0
    timed_steps = trainer.n_training_steps - args.warmup
    if timed_steps != args.steps:
        sys.exit(f"error: trainer ran {timed_steps} steps, expected {args.steps}")

    with torch.no_grad():
        x = acts[: args.batch]
        f = sae.encode(x)  # the training rule (BatchTopKTrainingSAE: top k * batch of this batch)
        x_hat = sae.decode(f)
        fvu = ((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        l0 = (f != 0).float().sum(-1).mean().item()
        extra = f" topk_threshold={sae.topk_threshold.item():.4g}" if args.arch == "batchtopk" else ""
        print(f"INFO after {trainer.n_training_steps} steps: fvu={fvu:.4f} l0={l0:.2f} "
              f"dead={int(trainer.dead_neurons.sum())}{extra} (first batch; a short run does not converge)")
    tokens_per_s = timed_steps * args.batch / elapsed
    print(f"INFO elapsed_s={elapsed:.3f} step_ms={1000 * elapsed / timed_steps:.2f}")
    print(f"FIGURE saelens_{args.arch}_m{args.d_sae}_tokens_per_s={tokens_per_s:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
