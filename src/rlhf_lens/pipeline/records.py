"""What the stages of a run share: how their records name paths and models, and which models and blocks
are analysed (read from the finished stages' outputs, `state[stage]`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..config import RunConfig


def digest(*parts) -> str:
    """16 hex digits of the sha256 of `parts` as JSON (stage keys, per-SAE init seeds)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def relative(run_dir: Path, path: str | os.PathLike) -> str:
    """How a path is recorded: relative to the run folder when inside it, so a moved or copied folder
    still finds its files (read back with `in_run`); a path outside it is recorded absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def in_run(run_dir: Path, recorded: str) -> Path:
    """A recorded path in the run folder as it is now (absolute ones, as older runs recorded, stay as they are)."""
    return run_dir / recorded


def recorded_model(outputs: dict, run_dir: Path | None = None) -> str | None:
    """The model a stage recorded: a folder it saved in the run (`dir`, resolved against `run_dir` when given)
    or the spec the user gave (`spec`: a hub id or path, kept as given)."""
    if outputs.get("dir"):
        return str(in_run(run_dir, outputs["dir"])) if run_dir is not None else outputs["dir"]
    return outputs.get("spec")


def analysed_models(state: dict, run_dir: Path | None = None) -> dict[str, str]:
    """Model name -> spec (see `recorded_model`: folders of the run resolved against `run_dir` when given,
    else as recorded): base, tuned, and the control and placebo models when they ran."""
    models = {"base": recorded_model(state["base"], run_dir), "tuned": recorded_model(state["rlhf"], run_dir)}
    control = recorded_model(state["control"], run_dir)
    if control:
        models["control"] = control
    placebo = recorded_model(state["placebo"], run_dir)
    if placebo:
        models["placebo"] = placebo
    return models


def layers_stage(config: RunConfig) -> str:
    """The stage that picks the analysed blocks: the divergence stage ranks them by parameters (the paper's), the
    diff stage by its causal ranking (divergence.rank)."""
    return "divergence" if config.divergence.rank == "parameters" else "diff"


def analysed_layers(config: RunConfig, state: dict) -> list[int]:
    """The analysed blocks, from the stage that picked them (`layers_stage`)."""
    return state[layers_stage(config)]["top_layers"]
