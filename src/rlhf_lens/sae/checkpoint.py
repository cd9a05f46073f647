"""Checkpoints and resume: what an epoch checkpoint of a `TrainingRun` holds and how a run is restored from it,
and whether an SAE folder already holds the finished SAE of a config."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import UserError
from ..io import atomic_path, read_json
from .config import CFG_FILE, CHECKPOINT_FILE, METRICS_FILE, WEIGHTS_FILE, SAEConfig
from .training_run import TrainingRun


def save_checkpoint(run: TrainingRun) -> None:
    """Write the run's checkpoint (weights, Adam state, epoch, RNG, counters, curve) to its folder, if any."""
    if run.out_dir is None:
        return
    state = {"config": asdict(run.cfg), "l1": run.l1,
             "epoch": run.epoch, "model": run.sae.state_dict(), "optim": run.stepper.opt.state_dict(),
             "rng": torch.get_rng_state(), "tokens_seen": run.tokens_seen, "train_seconds": run.train_seconds,
             "wall_seconds": run.wall_seconds, "last_epoch": run.last_epoch, "calibration": run.calibration,
             "steps": run.steps, "curve": run.curve, "resampled": run.resampled, "idle": run.stepper.idle,
             "threshold_steps": run.stepper.threshold_steps, "decay_start": run.decay_start,
             "interval": [run.interval_loss, run.interval_steps]}
    with atomic_path(run.out_dir / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def restore(run: TrainingRun, state: dict) -> None:
    """Put a fresh run (same config and l1) back where its checkpoint `state` left it."""
    run.sae.load_state_dict(state["model"])
    run.stepper.opt.load_state_dict(state["optim"])
    for p in run.stepper.opt.param_groups[0]["params"]:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch.set_rng_state(state["rng"])
    run.epoch = int(state["epoch"])
    run.tokens_seen = int(state["tokens_seen"])
    run.train_seconds = float(state["train_seconds"])
    run.wall_seconds = float(state.get("wall_seconds", 0.0))
    run.last_epoch = state.get("last_epoch") or {}
    run.calibration = state.get("calibration")
    run.steps = int(state["steps"])
    run.curve = list(state["curve"])
    run.resampled = int(state["resampled"])
    run.stepper.idle.copy_(state["idle"])
    run.stepper.idle_bound = int(state["idle"].max()) if state["idle"].numel() else 0
    run.stepper.threshold_steps = int(state["threshold_steps"])
    run.decay_start = state.get("decay_start")
    run.interval_loss, run.interval_steps = state["interval"]
    run.initialised = run.steps > 0


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state (on the CPU); UserError when the file cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"{path}: unreadable checkpoint (killed while writing?); delete it to start that SAE afresh") from None


def finished(out_dir: Path, cfg: SAEConfig) -> bool:
    """True if out_dir holds a finished SAE of this config; UserError if it holds another one."""
    cfg_path = out_dir / CFG_FILE
    ckpt = out_dir / CHECKPOINT_FILE
    if ckpt.is_file():
        saved = read_checkpoint(ckpt)["config"]
        if SAEConfig.from_dict(saved).identity() != cfg.identity():
            raise UserError(f"{out_dir}: holds a checkpoint of a different SAE config; use another output folder or delete it")
        return False
    if cfg_path.is_file() and (out_dir / METRICS_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file():
        saved = (read_json(cfg_path).get("rlhf_lens") or {}).get("config")
        if not isinstance(saved, dict) or SAEConfig.from_dict(saved).identity() != cfg.identity():
            raise UserError(f"{out_dir}: holds an SAE of a different config; use another output folder or delete it")
        return True
    return False

