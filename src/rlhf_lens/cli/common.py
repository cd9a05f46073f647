"""The Typer app the commands register on, and what several commands share."""

from __future__ import annotations

import json

import typer

from .. import __version__
from ..sections import RewardSection
from .options import Options

app = typer.Typer(
    help="What did RLHF teach this model, and did it learn the reward it was given?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

REWARD = Options(RewardSection, only=("spec",), names={"spec": "--reward"}, required=("spec",))
"""`--reward SPEC` (the reward a command tunes against, compares with or serves): the command's `reward`."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlhf-lens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """rlhf-lens: PPO, layer divergence, sparse autoencoders, MMCS, explanations, utility scores."""


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))
