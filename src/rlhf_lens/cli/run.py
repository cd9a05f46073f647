"""The whole method in one command (`run`, with `presets`), its report (`report`), and `RUN_ONLY`: the settings
a run config takes that no stage command does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ..errors import UserError
from ..interp.config import InterpConfig
from ..sections import ControlSection, DataSection, DivergenceSection, ModelSection, SAESection
from .common import app


def _every_field(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


RUN_ONLY: dict[type, tuple[str, ...]] = {
    ModelSection: _every_field(ModelSection),  # the stage commands name their models, device and dtype themselves
    DataSection: _every_field(DataSection),  # ... and their corpus
    DivergenceSection: ("rank",),  # a choice between two stages of a run
    SAESection: ("dict_ratios", "seeds"),  # the run's grid of SAEs (train-sae takes sizes and seeds as lists)
    InterpConfig: ("new_feature_threshold", "new_feature_quantile"),  # new features: tuned SAEs against base seeds
    ControlSection: _every_field(ControlSection),
}
"""Settings only a run config takes (class -> field names); every other field of a stage config is an option
of a stage command (tests/test_cli_coverage.py)."""


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="Run folder holding results.json (the --out of `rlhf-lens run`), or a "
                                   "folder of `rlhf-lens diff` holding diff.json."),
) -> None:
    """Render RUN_DIR/results.json (or a diff folder's diff.json) into a self-contained report.html and a summary.md."""
    from ..report import write_report

    html_path, md_path = write_report(run_dir)
    typer.echo(f"report: {html_path}\nsummary: {md_path}")


@app.command()
def presets() -> None:
    """List the presets `run --preset` takes (TOML files inside the package)."""
    from ..config import preset_description, preset_names

    for name in preset_names():
        typer.echo(f"{name:24s} {preset_description(name)}")


@app.command()
def run(
    out: Path = typer.Option(None, "--out", help="Run folder: config, artifacts, report. Rerun to resume."),
    preset: str = typer.Option(None, "--preset", help="A preset name (see `rlhf-lens presets`)."),
    config: Path = typer.Option(None, "--config", help="A TOML config file (sections as in the presets)."),
    set_: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable; "
                                   "--keys lists them)."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the resolved config and exit."),
    keys: bool = typer.Option(False, "--keys", help="List every section.key with its default and meaning, and exit."),
    executor: str = typer.Option("local", "--executor", help="Where the harvest, SAE and features jobs run: local "
                                 "(in this process, one after another) or ray (Ray tasks; needs "
                                 "pip install 'rlhf-lens\\[ray]'). Results are the same; see docs/scale.md."),
    ray_address: str = typer.Option(None, "--ray-address", help="With --executor ray: join the cluster at HOST:PORT "
                                    "(or 'auto') instead of starting a local one for this run."),
) -> None:
    """Run the whole method: PPO, divergence, harvest, SAEs, MMCS, explanations, scores, report."""
    from ..config import config_keys, config_toml, load_config
    from ..executors import check_executor
    from ..pipeline import run as run_pipeline

    check_executor(executor)
    if ray_address and executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    if keys:
        for key, default, text in config_keys():
            typer.echo(f"{key} = {default}\n    {text}")
        return
    resolved = load_config(preset, config, set_)
    if show_config:
        typer.echo(config_toml(resolved))
        return
    if out is None:
        raise UserError("give the run folder with --out DIR")
    try:
        report = run_pipeline(resolved, out, executor=executor, ray_address=ray_address)
    except KeyboardInterrupt:
        # Typer turns KeyboardInterrupt into a silent exit; say how to go on.
        typer.echo(f"interrupted: rerun the same command to resume the run in {out}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"report: {report}")
