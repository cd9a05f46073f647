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
    RESAMPLE_ENCODER_SCALE,
    SINGLE_THREAD_WORK,
    WEIGHTS_FILE,
    SAEConfig,
)
from .model import SparseAutoencoder, unit_rows
from .step import _Stepper


def plateaued(losses: list[float], window: int, tolerance: float) -> bool:
    """The stopping rule: with at least window + 1 evaluations, the best of the last `window` improves on the
    best before them by less than `tolerance` (relative)."""
    if len(losses) <= window:
        return False
    before, recent = min(losses[:-window]), min(losses[-window:])
    return before - recent < tolerance * abs(before)


class _Run:
    """The state of one SAE being trained: model, stepper, schedule, loss curve, stopping, files."""

    def __init__(self, cfg: SAEConfig, out_dir: Path | None, l1: float):
        self.cfg, self.out_dir = cfg, out_dir
        self.device = torch.device(cfg.device)
        self.sae = SparseAutoencoder(cfg).to(self.device)  # drawn on the CPU: the same init on every device
        self.sae.l1_used = l1
        self.l1 = l1
        self.stepper = _Stepper(self.sae, l1, cfg.lr)
        self.epoch = 0
        self.steps = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.calibration: dict | None = None
        self.last_epoch: dict = {}
        self.curve: list[dict] = []
        self.stop_reason: str | None = None
        self.resampled = 0
        self.decay_start: int | None = None
        """Step after which the learning rate decays (--lr-decay): set from the run's length with --epochs N,
        at the plateau until converged (the cool-down); None: not decaying."""
        self.initialised = False
        self._interval_loss, self._interval_steps = 0.0, 0
        self._pending: list[tuple[torch.Tensor, float, int]] = []
        """Steps not yet added to the statistics: (their [sq, l1 sum, nnz] on the device, l1, rows)."""
        self._timing: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        """On a GPU: (start, end) events of the steps not yet added to train_seconds."""
        self._reset_epoch_stats()

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def _reset_epoch_stats(self) -> None:
        self.fired = torch.zeros(self.cfg.dict_size, dtype=torch.int64, device=self.device)
        self.sq = self.l1sum = 0.0
        self.nnz = 0
        self.rows = 0

    def _schedule(self) -> None:
        """Learning rate and l1 of the next step (linear warm-ups)."""
        cfg, t = self.cfg, self.steps + 1
        lr = cfg.lr * min(1.0, t / cfg.lr_warmup) if cfg.lr_warmup else cfg.lr
        if self.decay_start is not None and t > self.decay_start:  # linear to 0 at decay_start + lr_decay
            lr *= max(0.0, 1 - (t - self.decay_start) / cfg.lr_decay)
        self.stepper.opt.param_groups[0]["lr"] = lr
        if not cfg.codes_by_rank:
            self.stepper.l1 = self.l1 * min(1.0, t / cfg.l1_warmup) if cfg.l1_warmup else self.l1

    def step(self, x: torch.Tensor, heldout: torch.Tensor | None) -> torch.Tensor:
        """One training step; returns its [sum of squared errors, sum of codes, nnz] (a device tensor: read it
        only to show it). The statistics are read back from the device at evaluation points and epoch ends."""
        cfg = self.cfg
        if not self.initialised:
            if cfg.b_dec_init == "mean" and self.steps == 0:
                with torch.no_grad():
                    self.sae.b_dec.copy_(x.mean(0))
            self.initialised = True
        self._schedule()
        if self.device.type == "cuda":  # GPU time of the step itself, read at the next sync (events do not wait)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            sq, l1sum, counts = self.stepper.step(x)
            end.record()
            self._timing.append((start, end))
        else:
            t0 = time.perf_counter()
            sq, l1sum, counts = self.stepper.step(x)
            self.train_seconds += time.perf_counter() - t0
        self.fired += counts
        stats = torch.stack([sq.double(), l1sum.double(), counts.sum().double()])
        self._pending.append((stats, self.stepper.l1, x.shape[0]))
        self.tokens_seen += x.shape[0]
        self.steps += 1
        if self.steps % cfg.eval_every == 0:
            self._collect()
            if heldout is not None:
                self.evaluate(heldout)
            if self.decay_start is None or self.steps < self.decay_start:  # no resampling into the decay
                self._resample(x)
            if cfg.epochs == 0 and heldout is not None and self.decay_start is None \
                    and self.steps >= max(cfg.lr_warmup, cfg.l1_warmup) \
                    and plateaued([p["heldout_loss"] for p in self.curve if p["step"] > max(cfg.lr_warmup, cfg.l1_warmup)],
                                  cfg.window, cfg.tolerance):
                if cfg.lr_decay:
                    self.decay_start = self.steps  # the cool-down: lr_decay more steps, then stop
                else:
                    self.stop_reason = "converged"
        if cfg.epochs == 0 and self.decay_start is not None and self.steps >= self.decay_start + cfg.lr_decay:
            self.stop_reason = "converged"
        if cfg.epochs == 0 and not self.done:
            if cfg.max_tokens and self.tokens_seen >= cfg.max_tokens:
                self.stop_reason = "max_tokens"
            elif cfg.max_seconds and self.train_seconds >= cfg.max_seconds:  # on a GPU: as of the last evaluation
                self.stop_reason = "max_seconds"
        return stats

    def _collect(self) -> None:
        """Add the pending steps to the epoch and interval statistics (one device read for all of them) and their
        GPU time to train_seconds; UserError if the loss went NaN/inf."""
        if self._timing:
            self._timing[-1][1].synchronize()
            self.train_seconds += sum(start.elapsed_time(end) for start, end in self._timing) / 1000
            self._timing.clear()
        if not self._pending:
            return
        values = torch.stack([stats for stats, _, _ in self._pending]).tolist()
        d = self.cfg.d_in
        for (sq, l1sum, nnz), (_, l1, b) in zip(values, self._pending):
            if not math.isfinite(sq):
                raise UserError(f"SAE m={self.cfg.dict_size} seed={self.cfg.seed} diverged (loss is NaN/inf); "
                                "lower --lr or check the activations' scale")
            self.sq += sq
            self.l1sum += l1sum
            self.nnz += int(nnz)
            self.rows += b
            self._interval_loss += sq / (b * d) + l1 * l1sum / b
            self._interval_steps += 1
        self._pending.clear()

    @torch.no_grad()
    def evaluate(self, heldout: torch.Tensor) -> None:
        """Append a point to the loss curve: the mean training loss since the last point and the held-out
        loss (the training objective at the current l1, codes as at inference, no auxiliary loss)."""
        self._collect()
        if self.curve and self.curve[-1]["step"] == self.steps:
            return
        sq = l1sum = 0.0
        nnz = 0
        for start in range(0, heldout.shape[0], 4096):
            x = heldout[start:start + 4096]
            x_hat, f = self.sae(x)
            sq += float((x_hat - x).double().pow(2).sum())
            l1sum += float(f.sum())
            nnz += int((f > 0).sum())
        n, d = heldout.shape
        mse = sq / (n * d)
        self.curve.append({
            "step": self.steps, "tokens": self.tokens_seen,
            "train_loss": self._interval_loss / self._interval_steps if self._interval_steps else None,
            "heldout_loss": mse + self.stepper.l1 * l1sum / n, "heldout_mse": mse, "heldout_l0": nnz / n,
        })
        self._interval_loss, self._interval_steps = 0.0, 0

    @torch.no_grad()
    def _resample(self, x: torch.Tensor) -> None:
        """Latents idle for cfg.dead_steps steps (every architecture; topk/batchtopk also have the auxiliary-k
        loss, which alone brings few of them back: docs/sae.md) restart on inputs this batch reconstructs badly
        (drawn with probability proportional to their squared error): decoder row = that input's residual
        direction, b_enc = 0, Adam moments of those rows reset (untied: encoder row = the direction times
        RESAMPLE_ENCODER_SCALE times the mean live encoder norm). Not in the last epoch of a fixed-epoch run."""
        cfg, sae = self.cfg, self.sae
        if not self.stepper.maybe_dead():
            return
        dead = self.stepper.dead_mask()
        if dead is None or not bool(dead.any()):
            return
        if cfg.epochs and self.epoch >= cfg.epochs - 1:
            return
        idx = dead.nonzero().view(-1)
        residual = x - sae(x)[0]
        weights = residual.pow(2).sum(1).double().cpu()  # drawn on the CPU: the same rows on every device
        if float(weights.sum()) <= 0:
            return
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.steps)
        rows = torch.multinomial(weights, idx.numel(), replacement=idx.numel() > x.shape[0], generator=g).to(x.device)
        direction = unit_rows(residual[rows])
        sae.decoder[idx] = direction
        if sae.encoder is not None:
            live = ~dead
            scale = float(sae.encoder[live].norm(dim=1).mean()) if bool(live.any()) else 1.0
            sae.encoder[idx] = direction * RESAMPLE_ENCODER_SCALE * scale
        sae.b_enc[idx] = 0.0
        for p in (sae.decoder, sae.encoder, sae.b_enc):
            if p is None:
                continue
            for moment in self.stepper.opt.state.get(p, {}).values():
                if isinstance(moment, torch.Tensor) and moment.shape[:1] == p.shape[:1] and moment.ndim >= 1:
                    moment[idx] = 0.0
        self.stepper.idle[idx] = 0
        self.resampled += idx.numel()

    def end_epoch(self) -> None:
        self._collect()
        rows = max(self.rows, 1)
        self.last_epoch = {
            "epoch": self.epoch, "train_mse": self.sq / (rows * self.cfg.d_in), "train_l0": self.nnz / rows,
            "dead_fraction": float((self.fired == 0).float().mean()), "rows": self.rows,
        }
        self.epoch += 1
        self._reset_epoch_stats()

    # checkpoint: weights, Adam state, epoch, RNG, counters, curve
    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        state = {"config": asdict(self.cfg), "l1": self.l1,
                 "epoch": self.epoch, "model": self.sae.state_dict(), "optim": self.stepper.opt.state_dict(),
                 "rng": torch.get_rng_state(), "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "wall_seconds": self.wall_seconds, "last_epoch": self.last_epoch, "calibration": self.calibration,
                 "steps": self.steps, "curve": self.curve, "resampled": self.resampled, "idle": self.stepper.idle,
                 "threshold_steps": self.stepper.threshold_steps, "decay_start": self.decay_start,
                 "interval": [self._interval_loss, self._interval_steps]}
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
        self.steps = int(state["steps"])
        self.curve = list(state["curve"])
        self.resampled = int(state["resampled"])
        self.stepper.idle.copy_(state["idle"])
        self.stepper._idle_bound = int(state["idle"].max()) if state["idle"].numel() else 0
        self.stepper.threshold_steps = int(state["threshold_steps"])
        self.decay_start = state.get("decay_start")
        self._interval_loss, self._interval_steps = state["interval"]
        self.initialised = self.steps > 0


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
        if SAEConfig.from_dict(saved).identity() != cfg.identity():
            raise UserError(f"{out_dir}: holds a checkpoint of a different SAE config; use another output folder or delete it")
        return False
    if cfg_path.is_file() and (out_dir / METRICS_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file():
        saved = (read_json(cfg_path).get("rlhf_lens") or {}).get("config")
        if not isinstance(saved, dict) or SAEConfig.from_dict(saved).identity() != cfg.identity():
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
        check_device(cfg.device)
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
        run.sae.to("cpu")  # what train_saes returns lives on the CPU, wherever it trained
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


def check_device(device: str) -> None:
    """UserError, before any training, when `device` names a GPU this machine does not have."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"SAE device {device!r}: CUDA is not available on this machine; train on --device cpu")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"SAE device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _split(source: ActivationSource, holdout: int, device: torch.device) -> tuple[ActivationSource, torch.Tensor | None]:
    """(training rows, held-out rows on `device`): the last min(holdout, n // 10) rows of the data are held out."""
    rows = min(holdout, source.n // 10)
    if rows < 1:
        return source, None
    train, heldout = source.split(rows)
    check_finite(heldout, "held-out activations")
    return train, heldout.to(device, torch.float32).contiguous()


def _total_steps(cfg: SAEConfig, steps_per_epoch: int) -> int | None:
    """Steps of the run for the progress bar (the token cap when training until converged; None: unknown)."""
    if cfg.epochs:
        return steps_per_epoch * cfg.epochs
    return math.ceil(cfg.max_tokens / cfg.batch_size) if cfg.max_tokens else None


def _train_groups(source: ActivationSource, runs: list[tuple[int, _Run]], eval_tokens: int, quiet: bool) -> None:
    """The passes over the data: SAEs with the same batch size, data seed, held-out size and device share every
    batch (moved to the device once)."""
    from ..progress import progress_bar

    groups: dict[tuple[int, int, int, str], list[_Run]] = {}
    for _, run in runs:
        groups.setdefault((run.cfg.batch_size, run.cfg.data_seed, run.cfg.holdout, str(run.device)), []).append(run)
    progress = progress_bar()
    if quiet:
        progress.disable = True  # before the live display starts
    with progress:
        for (batch_size, data_seed, holdout, device), group in groups.items():
            device = torch.device(device)
            train, heldout = _split(source, holdout, device)
            steps_per_epoch = math.ceil(train.n / batch_size)

            for run in group:
                if run.cfg.epochs and run.cfg.lr_decay:  # the run's length is known: decay over its last steps
                    run.decay_start = max(0, steps_per_epoch * run.cfg.epochs - run.cfg.lr_decay)
            tasks = {id(run): progress.add_task(f"SAE m={run.cfg.dict_size} s={run.cfg.seed}",
                                                total=_total_steps(run.cfg, steps_per_epoch), completed=run.steps)
                     for run in group}
            epoch = min(run.epoch for run in group)
            while True:
                active = [run for run in group if run.epoch == epoch and not run.done]
                if not active and all(run.done or run.epoch < epoch for run in group):
                    break
                last_update = 0.0
                epoch_start = time.perf_counter()
                if active:
                    for x in train.batches(batch_size, data_seed, epoch):
                        if x.shape[0] == 0:
                            continue
                        if x.device.type == "cpu":  # a source on the GPU was checked whole when it was made
                            check_finite(x, "activation batch")
                        x = x.to(device, torch.float32, non_blocking=True).contiguous()
                        stepping = [run for run in active if not run.done]
                        if not stepping:
                            break
                        shown = [run.step(x, heldout) for run in stepping]
                        now = time.perf_counter()
                        for run, stats in zip(stepping, shown):
                            desc = None
                            if now - last_update > 0.5:  # the only per-step device read, twice a second
                                sq, l1sum, nnz = stats.tolist()
                                b = x.shape[0]
                                loss = sq / (b * run.cfg.d_in) + run.stepper.l1 * l1sum / b
                                desc = f"SAE m={run.cfg.dict_size} s={run.cfg.seed} loss {loss:.4g} L0 {nnz / b:.1f}"
                            progress.update(tasks[id(run)], advance=1, description=desc)
                        if now - last_update > 0.5:
                            last_update = now
                wall = time.perf_counter() - epoch_start
                for run in active:
                    run.wall_seconds += wall
                    run.end_epoch()
                    if run.cfg.epochs and run.epoch >= run.cfg.epochs:
                        run.stop_reason = "epochs"
                    if not run.done:
                        run.save_checkpoint()
                epoch += 1
            for run in group:
                if heldout is not None:
                    run.evaluate(heldout)  # the final point (no-op when the last step was an evaluation)
            _evaluate(train, group, eval_tokens, heldout)


@torch.no_grad()
def _evaluate(source: ActivationSource, runs: list[_Run], eval_tokens: int, heldout: torch.Tensor | None) -> None:
    """Final metrics with the final weights on the first `eval_tokens` training rows of the epoch-0 order,
    and on the held-out rows."""
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
            "threshold": float(run.sae.threshold.mean()) if cfg.arch == "batchtopk" else None,
            "train_seconds": run.train_seconds,
            "wall_seconds": run.wall_seconds,
            "tokens_per_s": run.tokens_seen / run.train_seconds if run.train_seconds > 0 else None,
            "l1": run.stepper.l1 if not cfg.codes_by_rank else None,
            "target_l0": cfg.target_l0,
            "calibration": run.calibration,
            "last_epoch": run.last_epoch,
        }
        flags = quality_flags(l0, dead, cfg)
        if cfg.epochs and still_improving:
            flags["warnings"].append(f"held-out loss still falling after {cfg.epochs} epochs (more than "
                                     f"{100 * cfg.tolerance:g}% over the last {cfg.window} evaluations): "
                                     "not converged; train longer or use --epochs 0")
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
    full_steps = cfg.epochs * math.ceil(source.n / cfg.batch_size) if cfg.epochs else max_steps
    epoch_steps = math.ceil(sample_source.n / cfg.batch_size)
    trial_epochs = max(1, round(min(full_steps, max_steps) / epoch_steps))
    target = float(cfg.target_l0)
    trials: list[dict] = []

    def trial(l1: float) -> float:
        trial_cfg = dataclasses.replace(cfg, l1=l1, target_l0=None, epochs=trial_epochs, holdout=0)
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


