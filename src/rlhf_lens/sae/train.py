"""Training SAEs (`train_saes`): the entry point. It checks the configs, reuses finished folders, resumes
checkpoints or calibrates l1, trains in shared passes over the data (`loop`) and writes each SAE's folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..io import write_json
from ..sources import ActivationSource
from .calibrate import calibrate_l1
from .checkpoint import finished, read_checkpoint, restore
from .config import CHECKPOINT_FILE, EVAL_TOKENS, METRICS_FILE, SAEConfig
from .loop import check_configs, train_runs
from .model import SparseAutoencoder
from .training_run import TrainingRun


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
    check_configs(source, configs)
    results: list[SparseAutoencoder | None] = [None] * len(configs)
    runs: list[tuple[int, TrainingRun]] = []
    for i, cfg in enumerate(configs):
        out = out_dirs[i] if out_dirs is not None else None
        if out is not None and finished(out, cfg):
            results[i] = SparseAutoencoder.load(out)
            continue
        state = read_checkpoint(out / CHECKPOINT_FILE) if out is not None and (out / CHECKPOINT_FILE).is_file() else None
        if state is not None:
            run = TrainingRun(cfg, out, float(state["l1"]))
            restore(run, state)
        else:
            calibration = None
            l1 = cfg.l1
            if cfg.target_l0 is not None:
                l1, calibration = calibrate_l1(source, cfg, quiet=quiet)
            run = TrainingRun(cfg, out, l1)
            run.calibration = calibration
        runs.append((i, run))

    train_runs(source, [run for _, run in runs], eval_tokens, quiet)
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

