"""The `rlhf-lens` command line: one command per stage, plus `run` for all of them.

- `app`: the Typer app and `main`, the entry point (a user error is one line, no traceback).
- `options`: a command's options generated from the stage config dataclasses (`takes`, `Options`), so a new
  field of a config is a new option with its docstring as help.
- one module per pipeline stage: `foundation` (fetch, tiny-model), `rewards` (rlhf, reward, serve-reward),
  `harvest` (divergence, harvest), `sae` (train-sae, mmcs, synthetic, recovery), `interp` (explain,
  utility-score), `diff` (diff), `run` (run, presets, report; `RUN_ONLY`, the settings only a run takes).

A new command goes in its stage's module (a new stage: a new module, imported below) and takes its settings
with `@takes(Options(ItsConfig, into="config"))`. Commands only parse options and compose stage functions;
stages never import this package. Stage modules are imported inside each command so `--help` stays fast.
"""

# Each module registers its commands; imported in pipeline order, the order `rlhf-lens --help` lists them in.
from . import foundation, rewards, harvest, sae, interp, diff, run  # noqa: F401, I001
from .app import app, main

__all__ = ["app", "main"]
