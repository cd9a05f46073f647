"""One SAE being trained (`TrainingRun`): its model and stepper, the learning-rate and l1 schedules, the
statistics read back from the device, the held-out loss curve and the stopping rule, and dead-latent
resampling."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..errors import UserError
from .config import RESAMPLE_ENCODER_SCALE, SAEConfig
from .model import SparseAutoencoder, unit_rows
from .step import Stepper


def plateaued(losses: list[float], window: int, tolerance: float) -> bool:
    """The stopping rule: with at least window + 1 evaluations, the best of the last `window` improves on the
    best before them by less than `tolerance` (relative)."""
    if len(losses) <= window:
        return False
    before, recent = min(losses[:-window]), min(losses[-window:])
    return before - recent < tolerance * abs(before)


class TrainingRun:
    """The state of one SAE being trained: model, stepper, schedule, loss curve, stopping, files."""

    def __init__(self, cfg: SAEConfig, out_dir: Path | None, l1: float):
        self.cfg, self.out_dir = cfg, out_dir
        self.device = torch.device(cfg.device)
        self.sae = SparseAutoencoder(cfg).to(self.device)  # drawn on the CPU: the same init on every device
        self.sae.l1_used = l1
        self.l1 = l1
        self.stepper = Stepper(self.sae, l1, cfg.lr)
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
        self.interval_loss, self.interval_steps = 0.0, 0
        self._pending: list[tuple[torch.Tensor, float, int]] = []
        """Steps not yet added to the statistics: (their [sq, l1 sum, nnz] on the device, l1, rows)."""
        self._timing: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        """On a GPU: (start, end) events of the steps not yet added to train_seconds."""
        self._reset_epoch_stats()

    @property
    def label(self) -> str:
        """How progress lines name this SAE: its folder's name (in a run `m{size}-s{seed}`, the seed the folder
        is named after, not the init seed derived from it), or its size and seed when it has no folder."""
        return f"SAE {self.out_dir.name}" if self.out_dir is not None else f"SAE m={self.cfg.dict_size} s={self.cfg.seed}"

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
        if not self.sae.arch.codes_by_rank:
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
            self.interval_loss += sq / (b * d) + l1 * l1sum / b
            self.interval_steps += 1
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
            "train_loss": self.interval_loss / self.interval_steps if self.interval_steps else None,
            "heldout_loss": mse + self.stepper.l1 * l1sum / n, "heldout_mse": mse, "heldout_l0": nnz / n,
        })
        self.interval_loss, self.interval_steps = 0.0, 0

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
