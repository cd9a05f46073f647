"""Where the anchor runners run: virtual environments of their own, built by `make anchors`.

An anchor is another library's code timed beside ours on the same data and shapes (docs/anchors.md).
The libraries are not dependencies of rlhf-lens, and two of them cannot share an environment: sae-lens 6
needs transformers 5, while TRL 0.11.4 (the last TRL with the 2023 `PPOTrainer.step` API the paper used)
needs transformers 4. So each family has its own venv in the repository root:

    saelens  .venv-anchors      torch, sae-lens, transformer-lens  (pins: bench/anchors-saelens.txt)
    trl      .venv-anchors-trl  torch, trl 0.11.4, transformers 4  (pins: bench/anchors-trl.txt)

`RLHF_LENS_ANCHORS_VENV` and `RLHF_LENS_ANCHORS_TRL_VENV` point at a venv elsewhere.

A runner parses its arguments (so `--help` needs no venv), then calls `enter(family, modules)`: under any
other interpreter it re-executes the script with the family's Python; inside it, it checks that `modules`
import. A missing venv or package ends in one line naming `make anchors`. Standard library only, so any
python3 can start a runner.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "saelens": ("RLHF_LENS_ANCHORS_VENV", ".venv-anchors"),
    "trl": ("RLHF_LENS_ANCHORS_TRL_VENV", ".venv-anchors-trl"),
}
REEXEC_MARK = "RLHF_LENS_ANCHOR_REEXEC"
"""Set before re-executing, so a venv whose Python is not really a venv cannot loop."""

# Benchmarks read nothing from a hub and print no progress bars or telemetry.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def venv_path(family: str) -> Path:
    """The family's venv: its environment variable if set, else the folder `make anchors` creates."""
    variable, default = FAMILIES[family]
    return Path(os.environ.get(variable) or ROOT / default)


def venv_python(family: str) -> Path:
    return venv_path(family) / "bin" / "python"


def missing_line(family: str) -> str | None:
    """One line saying the family's venv is absent and how to make it, or None when it is there."""
    if venv_python(family).exists():
        return None
    variable, _ = FAMILIES[family]
    return (f"error: the {family} anchors' venv {venv_path(family)} does not exist: run `make anchors` "
            f"in the repository root (or set {variable} to a venv that has them)")


def inside(family: str) -> bool:
    """True when this interpreter is the family's venv."""
    return Path(sys.prefix).resolve() == venv_path(family).resolve()


def enter(family: str, modules: tuple[str, ...]) -> None:
    """Continue only inside the family's venv, with `modules` importable; re-execute this script there if needed."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not inside(family):
        problem = missing_line(family)
        if problem:
            sys.exit(problem)
        if os.environ.get(REEXEC_MARK) == family:
            sys.exit(f"error: {venv_python(family)} does not run inside {venv_path(family)} (not a venv?): "
                     f"remove it and run `make anchors`")
        os.environ[REEXEC_MARK] = family
        python = str(venv_python(family))
        os.execv(python, [python, str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if absent:
        sys.exit(f"error: {', '.join(absent)} not installed in {venv_path(family)}: remove that folder and run "
                 f"`make anchors`")


def runtime_line() -> str:
    """An INFO line with the interpreter, library versions and thread count a figure was taken with."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    parts = [f"python={platform.python_version()}", f"torch={torch.__version__}",
             f"threads={torch.get_num_threads()}", f"cpus={os.cpu_count()}", f"venv={sys.prefix}"]
    for package in ("sae-lens", "transformer-lens", "trl", "transformers"):
        try:
            parts.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            pass
    return "INFO runtime " + " ".join(parts)
