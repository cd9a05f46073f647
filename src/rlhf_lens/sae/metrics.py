"""What training reports: the final metrics of trained SAEs (metrics.json), their quality flags, and reading
metrics.json back."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..io import read_json
from ..sources import ActivationSource
from .config import DENSE_L0_FRACTION, METRICS_FILE, MOSTLY_DEAD_FRACTION, SAEConfig
from .training_run import TrainingRun, plateaued


@torch.no_grad()
def final_metrics(source: ActivationSource, runs: list[TrainingRun], eval_tokens: int, heldout: torch.Tensor | None) -> None:
    """Each run's `sae.metrics`: final metrics with the final weights on the first `eval_tokens` training rows
    of the epoch-0 order, and on the held-out rows."""
    batch_size, data_seed, device = runs[0].cfg.batch_size, runs[0].cfg.data_seed, runs[0].device
    n = 0
    sum_x = torch.zeros(source.d, dtype=torch.float64, device=device)
    sum_x2 = 0.0
    sq = [0.0] * len(runs)
    nnz = [0] * len(runs)
    for x in source.batches(batch_size, data_seed, 0):
        x = x.to(device, torch.float32)
        take = min(x.shape[0], eval_tokens - n)
        x = x[:take]
        n += take
        sum_x += x.sum(0, dtype=torch.float64)
        sum_x2 += float(x.double().pow(2).sum())
        for j, run in enumerate(runs):
            x_hat, f = run.sae(x)
            sq[j] += float((x_hat - x).double().pow(2).sum())
            nnz[j] += int((f > 0).sum())
        if n >= eval_tokens:
            break
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n
    heldout_var = float((heldout.double() - heldout.double().mean(0)).pow(2).sum()) if heldout is not None else 0.0
    for j, run in enumerate(runs):
        cfg = run.cfg
        l0 = nnz[j] / n
        steps_per_epoch = math.ceil(source.n / cfg.batch_size)
        # latents that did not fire in the last epoch's worth of steps (resampling restarts a latent's count)
        dead = float((run.stepper.idle >= min(run.steps, steps_per_epoch)).float().mean()) if run.steps else 0.0
        losses = [p["heldout_loss"] for p in run.curve]
        still_improving = None if not losses or len(losses) <= cfg.window else \
            not plateaued(losses, cfg.window, cfg.tolerance)
        last = run.curve[-1] if run.curve else {}
        metrics = {
            "mse": sq[j] / (n * cfg.d_in),
            "fvu": sq[j] / total_var if total_var > 0 else float("nan"),
            "mean_l0": l0,
            "dead_fraction": dead,
            "eval_tokens": n,
            "heldout_tokens": 0 if heldout is None else heldout.shape[0],
            "heldout_mse": last.get("heldout_mse"),
            "heldout_fvu": last["heldout_mse"] * heldout.numel() / heldout_var if last and heldout_var > 0 else None,
            "heldout_l0": last.get("heldout_l0"),
            "tokens_seen": run.tokens_seen,
            "steps": run.steps,
            "epochs": run.epoch,
            "stop_reason": run.stop_reason,
            "converged": run.stop_reason == "converged" or still_improving is False,
            "still_improving": still_improving,
            "curve": run.curve,
            "resampled": run.resampled,
            "lr_decay_start": run.decay_start,
            "threshold": float(run.sae.threshold.mean()) if run.sae.arch.learns_threshold else None,
            "train_seconds": run.train_seconds,
            "wall_seconds": run.wall_seconds,
            "tokens_per_s": run.tokens_seen / run.train_seconds if run.train_seconds > 0 else None,
            "l1": run.stepper.l1 if not run.sae.arch.codes_by_rank else None,
            "target_l0": cfg.target_l0,
            "calibration": run.calibration,
            "last_epoch": run.last_epoch,
        }
        flags = quality_flags(l0, dead, cfg)
        if cfg.epochs and still_improving:
            flags["warnings"].append(f"held-out loss still falling after {cfg.epochs} epochs (more than "
                                     f"{100 * cfg.tolerance:g}% over the last {cfg.window} evaluations): "
                                     "not converged; train longer or use --epochs 0")
        if run.stop_reason == "max_seconds":  # where the clock stops training depends on the machine and its load
            flags["warnings"].append(f"stopped by the time cap (--max-seconds {cfg.max_seconds:g}) before converging: "
                                     "the same seed can give other weights on a slower or busier machine; cap "
                                     "with --max-tokens for a reproducible stop")
        metrics.update(flags)
        run.sae.metrics = metrics


def quality_flags(mean_l0: float, dead_fraction: float, cfg: SAEConfig) -> dict:
    """`dense_codes`, `mostly_dead` flags and the warning sentences that go with them."""
    messages = []
    dense = mean_l0 > DENSE_L0_FRACTION * cfg.d_in
    mostly_dead = dead_fraction > MOSTLY_DEAD_FRACTION
    if dense:
        messages.append(f"dense codes: mean L0 {mean_l0:.1f} > {DENSE_L0_FRACTION:g} * d ({cfg.d_in}); "
                        "raise --l1 or use --target-l0")
    if mostly_dead:
        messages.append(f"{100 * dead_fraction:.0f}% of features never fired in the last epoch's worth of steps; "
                        "lower --l1 or use --target-l0")
    if cfg.target_l0 is not None and abs(mean_l0 - cfg.target_l0) > 0.5 * cfg.target_l0:
        messages.append(f"mean L0 {mean_l0:.1f} is far from --target-l0 {cfg.target_l0:g} (the search sample "
                        "behaves unlike the full run); retrain with a larger calibration sample or set --l1")
    return {"dense_codes": dense, "mostly_dead": mostly_dead, "warnings": messages}


def read_metrics(sae_dir: str | Path) -> dict:
    """metrics.json of an SAE folder."""
    return read_json(Path(sae_dir) / METRICS_FILE)
