"""The passes over the data: SAEs that share a batch size, data seed, held-out size and device are fed every
batch together, epoch by epoch, then evaluated; and the checks a config passes before any of it."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

from ..errors import UserError
from ..sources import ActivationSource, check_finite
from .checkpoint import save_checkpoint
from .config import SINGLE_THREAD_WORK, SAEConfig
from .metrics import final_metrics
from .training_run import TrainingRun


def check_configs(source: ActivationSource, configs: list[SAEConfig]) -> None:
    """UserError, before any training, for a config out of range or that cannot train on `source` here."""
    for cfg in configs:
        cfg.check()
        if cfg.d_in != source.d:
            raise UserError(f"SAE d_in {cfg.d_in} does not match the activations' width {source.d}")
        check_device(cfg.device)


def train_runs(source: ActivationSource, runs: list[TrainingRun], eval_tokens: int, quiet: bool) -> None:
    """Train the runs to their end and fill their final metrics; on one thread when every step is small."""
    if runs and max(r.cfg.batch_size * r.cfg.dict_size * r.cfg.d_in for r in runs) < SINGLE_THREAD_WORK:
        with _one_thread():
            _train_groups(source, runs, eval_tokens, quiet)
    else:
        _train_groups(source, runs, eval_tokens, quiet)


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


def total_steps(cfg: SAEConfig, rows: int) -> int | None:
    """The most steps a run on `rows` training rows takes, for its progress bar: its epochs, or when training until
    converged the step at which it reaches its token cap (None: no cap). An epoch ends with one smaller batch, so
    the cap is more steps than max_tokens / batch size."""
    per_epoch = math.ceil(rows / cfg.batch_size)
    if cfg.epochs:
        return per_epoch * cfg.epochs
    if not cfg.max_tokens:
        return None
    epochs, rest = divmod(cfg.max_tokens, rows)
    return epochs * per_epoch + math.ceil(rest / cfg.batch_size)


def _train_groups(source: ActivationSource, runs: list[TrainingRun], eval_tokens: int, quiet: bool) -> None:
    """The passes over the data: SAEs with the same batch size, data seed, held-out size and device share every
    batch (moved to the device once)."""
    from ..progress import progress_bar

    groups: dict[tuple[int, int, int, str], list[TrainingRun]] = {}
    for run in runs:
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
            tasks = {id(run): progress.add_task(run.label, total=total_steps(run.cfg, train.n), completed=run.steps)
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
                                desc = f"{run.label} loss {loss:.4g} L0 {nnz / b:.1f}"
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
                        save_checkpoint(run)
                epoch += 1
            for run in group:
                if heldout is not None:
                    run.evaluate(heldout)  # the final point (no-op when the last step was an evaluation)
                # its last line says why it stopped (converged runs stop short of the cap)
                progress.update(tasks[id(run)], description=f"{run.label} stopped: {run.stop_reason}")
            final_metrics(train, group, eval_tokens, heldout)
