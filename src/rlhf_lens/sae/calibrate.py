"""Sparsity calibration: the l1 whose SAE reaches a target mean L0, found by short trainings on a sample."""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import UserError
from ..sources import ActivationSource, TensorSource
from .config import SAEConfig
from .loop import check_configs, train_runs
from .training_run import TrainingRun

CALIBRATION_TOKENS = 65536
"""Rows of the data the l1 search trains on (all of it when the data are smaller)."""
CALIBRATION_MAX_STEPS = 3000
"""Most optimiser steps of one search trial (trials repeat the sample to match the full run's steps up to this)."""


def calibrate_l1(source: ActivationSource, cfg: SAEConfig, *, sample_tokens: int = CALIBRATION_TOKENS,
                 max_steps: int = CALIBRATION_MAX_STEPS, tolerance: float = 0.1, max_trials: int = 14,
                 quiet: bool = False) -> tuple[float, dict]:
    """Find the l1 whose SAE reaches mean L0 ~ cfg.target_l0: short trainings on a sample (same seed, batch
    size and lr; as many steps as the full run, up to `max_steps`, since L0 keeps falling with steps),
    bracketing the target by factors of 4 from cfg.l1, then bisecting in log l1 until the L0 is within
    `tolerance` (relative) of the target. Returns (l1, record of the search)."""
    if cfg.target_l0 is None:
        raise UserError("calibrate_l1 needs a config with target_l0")
    if source.n <= sample_tokens:
        sample_source: ActivationSource = source
    else:
        rows, taken = [], 0
        for x in source.batches(cfg.batch_size, cfg.data_seed, 0):
            rows.append(x[: sample_tokens - taken].to(torch.float32))
            taken += rows[-1].shape[0]
            if taken >= sample_tokens:
                break
        sample_source = TensorSource(torch.cat(rows))
    full_steps = cfg.epochs * math.ceil(source.n / cfg.batch_size) if cfg.epochs else max_steps
    epoch_steps = math.ceil(sample_source.n / cfg.batch_size)
    trial_epochs = max(1, round(min(full_steps, max_steps) / epoch_steps))
    target = float(cfg.target_l0)
    trials: list[dict] = []

    def trial(l1: float) -> float:
        trial_cfg = dataclasses.replace(cfg, l1=l1, target_l0=None, epochs=trial_epochs, holdout=0)
        check_configs(sample_source, [trial_cfg])
        run = TrainingRun(trial_cfg, None, l1)
        train_runs(sample_source, [run], eval_tokens=sample_source.n, quiet=True)
        l0 = run.sae.metrics["mean_l0"]
        trials.append({"l1": l1, "mean_l0": l0})
        return l0

    lo = hi = None  # lo: l1 with L0 above target; hi: l1 with L0 at/below target
    l1 = cfg.l1
    for _ in range(max_trials):
        l0 = trial(l1)
        if abs(l0 - target) <= tolerance * target:
            break
        if l0 > target:
            lo = l1
        else:
            hi = l1
        if lo is not None and hi is not None:
            l1 = math.sqrt(lo * hi)
        elif lo is not None:
            l1 = lo * 4.0
        else:
            l1 = hi / 4.0
    best = min(trials, key=lambda t: abs(t["mean_l0"] - target))
    record = {"target_l0": target, "l1": best["l1"], "sample_l0": best["mean_l0"], "sample_tokens": sample_source.n,
              "trial_epochs": trial_epochs, "trial_steps": trial_epochs * epoch_steps, "full_steps": full_steps,
              "tolerance": tolerance, "trials": trials}
    if not quiet:
        from ..progress import console

        console.print(f"l1 search: l1 {best['l1']:.3g} gives L0 {best['mean_l0']:.1f} (target {target:g}) "
                      f"after {len(trials)} trials on {sample_source.n} tokens")
    return best["l1"], record
