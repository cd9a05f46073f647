"""Training SAEs: several per pass over the data, epoch checkpoints and resume, final evaluation, quality
flags, l1 calibration to a target L0, and reading metrics.json."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import UserError
from ..io import atomic_path, read_json, write_json
from ..sources import ActivationSource, TensorSource, check_finite
from .config import (
    CFG_FILE,
    CHECKPOINT_FILE,
    DENSE_L0_FRACTION,
    EVAL_TOKENS,
    METRICS_FILE,
    MOSTLY_DEAD_FRACTION,
    SINGLE_THREAD_WORK,
    WEIGHTS_FILE,
    SAEConfig,
)
from .model import SparseAutoencoder
from .step import _Stepper


class _Run:
    """The state of one SAE being trained: model, stepper, epoch statistics, files."""

    def __init__(self, cfg: SAEConfig, out_dir: Path | None, l1: float):
        self.cfg, self.out_dir = cfg, out_dir
        self.sae = SparseAutoencoder(cfg)
        self.sae.l1_used = l1
        self.stepper = _Stepper(self.sae, l1, cfg.lr)
        self.epoch = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.calibration: dict | None = None
        self.last_epoch: dict = {}
        self._reset_epoch_stats()

    def _reset_epoch_stats(self) -> None:
        self.fired = torch.zeros(self.cfg.dict_size, dtype=torch.int64)
        self.sq = self.l1sum = 0.0
        self.nnz = 0
        self.rows = 0

    def step(self, x: torch.Tensor) -> tuple[float, float]:
        t0 = time.perf_counter()
        sq, l1sum, counts = self.stepper.step(x)
        self.train_seconds += time.perf_counter() - t0
        b, d = x.shape
        if not math.isfinite(sq):
            raise UserError(f"SAE m={self.cfg.dict_size} seed={self.cfg.seed} diverged (loss is NaN/inf); "
                            "lower --lr or check the activations' scale")
        self.fired += counts
        nnz = int(counts.sum())
        self.sq += sq
        self.l1sum += l1sum
        self.nnz += nnz
        self.rows += b
        self.tokens_seen += b
        loss = sq / (b * d) + self.stepper.l1 * l1sum / b
        return loss, nnz / b

    def end_epoch(self) -> None:
        rows = max(self.rows, 1)
        self.last_epoch = {
            "epoch": self.epoch, "train_mse": self.sq / (rows * self.cfg.d_in), "train_l0": self.nnz / rows,
            "dead_fraction": float((self.fired == 0).float().mean()),
        }
        self.epoch += 1
        self._reset_epoch_stats()

    # checkpoint: weights, Adam state, epoch, RNG, counters
    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        state = {"config": asdict(self.cfg), "l1": self.stepper.l1 if self.cfg.arch != "topk" else self.cfg.l1,
                 "epoch": self.epoch, "model": self.sae.state_dict(), "optim": self.stepper.opt.state_dict(),
                 "rng": torch.get_rng_state(), "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "wall_seconds": self.wall_seconds, "last_epoch": self.last_epoch, "calibration": self.calibration}
        with atomic_path(self.out_dir / CHECKPOINT_FILE) as tmp:
            torch.save(state, tmp)

    def restore(self, state: dict) -> None:
        self.sae.load_state_dict(state["model"])
        self.stepper.opt.load_state_dict(state["optim"])
        for p in self.stepper.opt.param_groups[0]["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.tokens_seen = int(state["tokens_seen"])
        self.train_seconds = float(state["train_seconds"])
        self.wall_seconds = float(state.get("wall_seconds", 0.0))
        self.last_epoch = state.get("last_epoch") or {}
        self.calibration = state.get("calibration")


def _read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"{path}: unreadable checkpoint (killed while writing?); delete it to start that SAE afresh") from None


def _finished(out_dir: Path, cfg: SAEConfig) -> bool:
    """True if out_dir holds a finished SAE of this config; UserError if it holds another one."""
    cfg_path = out_dir / CFG_FILE
    ckpt = out_dir / CHECKPOINT_FILE
    if ckpt.is_file():
        saved = _read_checkpoint(ckpt)["config"]
        if saved != asdict(cfg):
            raise UserError(f"{out_dir}: holds a checkpoint of a different SAE config; use another output folder or delete it")
        return False
    if cfg_path.is_file() and (out_dir / METRICS_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file():
        saved = (read_json(cfg_path).get("rlhf_lens") or {}).get("config")
        if saved != asdict(cfg):
            raise UserError(f"{out_dir}: holds an SAE of a different config; use another output folder or delete it")
        return True
    return False


def train_saes(source: ActivationSource, configs: list[SAEConfig], out_dirs: list[Path] | None = None, *,
               metadata: dict | None = None, eval_tokens: int = EVAL_TOKENS, quiet: bool = False) -> list[SparseAutoencoder]:
    """Train every SAE in `configs` on `source`, feeding each batch to all SAEs that share a batch size and
    data seed (one pass over the data per epoch). With `out_dirs`, each SAE is checkpointed after every
    epoch (a rerun resumes), and written as cfg.json + sae_weights.safetensors + metrics.json; a folder
    that already holds the finished SAE is loaded, not retrained. Returns the SAEs (`.metrics` filled)."""
    from ..progress import console

    if not configs:
        raise UserError("no SAE to train: give at least one dictionary size")
    if out_dirs is not None:
        out_dirs = [Path(p) for p in out_dirs]
        if len(out_dirs) != len(configs):
            raise UserError(f"{len(configs)} SAE configs but {len(out_dirs)} output folders")
        if len(set(map(str, out_dirs))) != len(out_dirs):
            raise UserError("two SAEs would be written to the same folder; give each its own")
    for cfg in configs:
        cfg.check()
        if cfg.d_in != source.d:
            raise UserError(f"SAE d_in {cfg.d_in} does not match the activations' width {source.d}")
    results: list[SparseAutoencoder | None] = [None] * len(configs)
    runs: list[tuple[int, _Run]] = []
    for i, cfg in enumerate(configs):
        out = out_dirs[i] if out_dirs is not None else None
        if out is not None and _finished(out, cfg):
            results[i] = SparseAutoencoder.load(out)
            continue
        state = _read_checkpoint(out / CHECKPOINT_FILE) if out is not None and (out / CHECKPOINT_FILE).is_file() else None
        if state is not None:
            run = _Run(cfg, out, float(state["l1"]))
            run.restore(state)
        else:
            calibration = None
            l1 = cfg.l1
            if cfg.target_l0 is not None:
                l1, calibration = calibrate_l1(source, cfg, quiet=quiet)
            run = _Run(cfg, out, l1)
            run.calibration = calibration
        runs.append((i, run))

    if runs and max(r.cfg.batch_size * r.cfg.dict_size * r.cfg.d_in for _, r in runs) < SINGLE_THREAD_WORK:
        with _one_thread():
            _train_groups(source, runs, eval_tokens, quiet)
    else:
        _train_groups(source, runs, eval_tokens, quiet)
    for i, run in runs:
        for message in run.sae.metrics["warnings"]:
            if not quiet:
                console.print(f"[yellow]warning[/yellow] SAE m={run.cfg.dict_size} seed={run.cfg.seed}: {message}")
        if run.out_dir is not None:
            run.sae.save(run.out_dir, metadata=metadata)
            write_json(run.out_dir / METRICS_FILE, run.sae.metrics)
            (run.out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        results[i] = run.sae
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_groups(source: ActivationSource, runs: list[tuple[int, _Run]], eval_tokens: int, quiet: bool) -> None:
    """The passes over the data: SAEs with the same batch size and data seed share every batch."""
    from ..progress import progress_bar

    groups: dict[tuple[int, int], list[_Run]] = {}
    for _, run in runs:
        groups.setdefault((run.cfg.batch_size, run.cfg.data_seed), []).append(run)
    progress = progress_bar()
    if quiet:
        progress.disable = True  # before the live display starts
    with progress:
        for (batch_size, data_seed), group in groups.items():
            steps_per_epoch = math.ceil(source.n / batch_size)
            tasks = {id(run): progress.add_task(
                f"SAE m={run.cfg.dict_size} s={run.cfg.seed}", total=steps_per_epoch * run.cfg.epochs,
                completed=steps_per_epoch * run.epoch) for run in group}
            first = min(run.epoch for run in group)
            last = max(run.cfg.epochs for run in group)
            for epoch in range(first, last):
                active = [run for run in group if run.epoch == epoch < run.cfg.epochs]
                if not active:
                    continue
                last_update = 0.0
                epoch_start = time.perf_counter()
                for x in source.batches(batch_size, data_seed, epoch):
                    if x.shape[0] == 0:
                        continue
                    x = x.to(torch.float32).contiguous()
                    check_finite(x, "activation batch")
                    shown = []
                    for run in active:
                        shown.append(run.step(x))
                    now = time.perf_counter()
                    for run, (loss, l0) in zip(active, shown):
                        desc = None
                        if now - last_update > 0.5:
                            desc = f"SAE m={run.cfg.dict_size} s={run.cfg.seed} loss {loss:.4g} L0 {l0:.1f}"
                        progress.update(tasks[id(run)], advance=1, description=desc)
                    if now - last_update > 0.5:
                        last_update = now
                wall = time.perf_counter() - epoch_start
                for run in active:
                    run.wall_seconds += wall
                    run.end_epoch()
                    run.save_checkpoint()
        finished = [run for _, run in runs]
        if finished:
            _evaluate(source, finished, eval_tokens)


@torch.no_grad()
def _evaluate(source: ActivationSource, runs: list[_Run], eval_tokens: int) -> None:
    """Final metrics with the final weights on the first `eval_tokens` rows of the epoch-0 order."""
    batch_size, data_seed = runs[0].cfg.batch_size, runs[0].cfg.data_seed
    n = 0
    sum_x = torch.zeros(source.d, dtype=torch.float64)
    sum_x2 = 0.0
    sq = [0.0] * len(runs)
    nnz = [0] * len(runs)
    for x in source.batches(batch_size, data_seed, 0):
        x = x.to(torch.float32)
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
    for j, run in enumerate(runs):
        cfg = run.cfg
        l0 = nnz[j] / n
        dead = run.last_epoch.get("dead_fraction", 0.0)
        metrics = {
            "mse": sq[j] / (n * cfg.d_in),
            "fvu": sq[j] / total_var if total_var > 0 else float("nan"),
            "mean_l0": l0,
            "dead_fraction": dead,
            "eval_tokens": n,
            "tokens_seen": run.tokens_seen,
            "epochs": run.epoch,
            "train_seconds": run.train_seconds,
            "wall_seconds": run.wall_seconds,
            "tokens_per_s": run.tokens_seen / run.train_seconds if run.train_seconds > 0 else None,
            "l1": run.stepper.l1 if cfg.arch != "topk" else None,
            "target_l0": cfg.target_l0,
            "calibration": run.calibration,
            "last_epoch": run.last_epoch,
        }
        flags = quality_flags(l0, dead, cfg)
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
        messages.append(f"{100 * dead_fraction:.0f}% of features never fired in the last epoch; "
                        "lower --l1 or use --target-l0")
    if cfg.target_l0 is not None and abs(mean_l0 - cfg.target_l0) > 0.5 * cfg.target_l0:
        messages.append(f"mean L0 {mean_l0:.1f} is far from --target-l0 {cfg.target_l0:g} (the search sample "
                        "behaves unlike the full run); retrain with a larger calibration sample or set --l1")
    return {"dense_codes": dense, "mostly_dead": mostly_dead, "warnings": messages}


# --- sparsity calibration --------------------------------------------------------------------------------


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
    full_steps = cfg.epochs * math.ceil(source.n / cfg.batch_size)
    epoch_steps = math.ceil(sample_source.n / cfg.batch_size)
    trial_epochs = max(1, round(min(full_steps, max_steps) / epoch_steps))
    target = float(cfg.target_l0)
    trials: list[dict] = []

    def trial(l1: float) -> float:
        trial_cfg = dataclasses.replace(cfg, l1=l1, target_l0=None, epochs=trial_epochs)
        sae = train_saes(sample_source, [trial_cfg], None, eval_tokens=sample_source.n, quiet=True)[0]
        l0 = sae.metrics["mean_l0"]
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


def read_metrics(sae_dir: str | Path) -> dict:
    """metrics.json of an SAE folder."""
    return read_json(Path(sae_dir) / METRICS_FILE)


