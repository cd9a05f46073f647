"""The command line is generated from the stage configs: every field of every stage config is an option of a
stage command (or set by it) or named in `cli.run.RUN_ONLY`; a new field becomes an option by itself."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer
from typer.testing import CliRunner

from rlhf_lens.cli import app
from rlhf_lens.cli.options import TAKEN, Options, build, takes
from rlhf_lens.cli.run import RUN_ONLY
from rlhf_lens.config import RunConfig
from rlhf_lens.errors import UserError
from rlhf_lens.harvest.config import HarvestConfig
from rlhf_lens.sae.config import SAEConfig
from rlhf_lens.serve import ServeConfig
from rlhf_lens.synthetic import SyntheticConfig

STANDALONE = (SAEConfig, HarvestConfig, SyntheticConfig, ServeConfig)
"""Stage configs a command builds that are not a run config's section."""


def _stage_configs() -> list[type]:
    """The run config's sections and their nested sections, and the stage commands' own configs."""
    found: list[type] = []

    def walk(cls: type) -> None:
        if cls not in found:
            found.append(cls)
            for hint in typing.get_type_hints(cls).values():
                if dataclasses.is_dataclass(hint):
                    walk(hint)

    for section in typing.get_type_hints(RunConfig).values():
        walk(section)
    for cls in STANDALONE:
        walk(cls)
    return found


def _declared_by(cls: type, name: str) -> type:
    """The most basic dataclass of `cls` that has the field (SAESection and SAEConfig share SAETraining's)."""
    return next(k for k in reversed(cls.__mro__) if name in getattr(k, "__dataclass_fields__", {}))


def _taken(cls: type, name: str) -> bool:
    return any(name in fields and _declared_by(k, name) is _declared_by(cls, name) for k, fields in TAKEN.items())


def test_every_field_of_every_stage_config_is_an_option_or_run_only():
    configs = _stage_configs()
    assert len(configs) >= 20  # the sections, the decompose methods, interp.llm and the commands' configs
    missing, both = [], []
    for cls in configs:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
                continue  # a nested section: its own fields are checked
            run_only = f.name in RUN_ONLY.get(cls, ())
            if not run_only and not _taken(cls, f.name):
                missing.append(f"{cls.__name__}.{f.name}")
            if run_only and _taken(cls, f.name):
                both.append(f"{cls.__name__}.{f.name}")
    assert missing == [], f"neither an option of a command nor in cli.run.RUN_ONLY: {missing}"
    assert both == [], f"options of a command, yet listed in RUN_ONLY: {both}"
    for cls, names in RUN_ONLY.items():
        assert set(names) <= {f.name for f in dataclasses.fields(cls)}, cls


def test_the_commands_that_build_a_config_take_all_of_it():
    """harvest, train-sae, synthetic and serve-reward build their configs from generated options: nothing of them
    is left to a run, so a new field is a new option."""
    assert not set(STANDALONE) & set(RUN_ONLY)
    assert TAKEN[HarvestConfig]["layers"] == "--layers" and TAKEN[ServeConfig]["request_timeout"] == "--request-timeout"
    assert TAKEN[SAEConfig]["d_in"] == "set by train_sae_command" and TAKEN[SAEConfig]["dict_size"] == "--dict-size"


@dataclasses.dataclass
class Inner:
    depth: int = 2
    """How deep."""


@dataclasses.dataclass
class Toy:
    size: int = 3
    """How many."""
    rate: float | None = None
    """How fast (default: auto)."""
    shout: bool = False
    """Loudly."""
    alphas: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5, 2.0])
    """Strengths."""
    inner: Inner = dataclasses.field(default_factory=Inner)
    """Nested settings."""


def test_a_dataclass_becomes_options_with_its_defaults_docstrings_and_types():
    toy = typer.Typer()
    seen = []

    @toy.command()
    @takes(Options(Toy, into="config", names={"shout": "--shout/--whisper"}))
    def go(name: str = typer.Argument(...), *, config: Toy) -> None:
        seen.append((name, config))

    @toy.command()
    def other() -> None:
        """A second command, so `go` is a subcommand."""

    runner = CliRunner()
    shown = runner.invoke(toy, ["go", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    for text in ("--size", "How many.", "--rate", "--shout", "--whisper", "--alphas", "Strengths. Comma-separated.",
                 "0,0.5,2", "--inner-depth", "How deep."):
        assert text in shown, text
    assert runner.invoke(toy, ["go", "x"]).exit_code == 0
    assert seen.pop() == ("x", Toy())
    result = runner.invoke(toy, ["go", "y", "--size", "5", "--rate", "0.5", "--whisper", "--alphas", "1,4",
                                 "--inner-depth", "7"])
    assert result.exit_code == 0, result.output
    assert seen.pop() == ("y", Toy(size=5, rate=0.5, shout=False, alphas=[1.0, 4.0], inner=Inner(depth=7)))
    bad = runner.invoke(toy, ["go", "z", "--alphas", "1,x"])
    assert isinstance(bad.exception, UserError) and "--alphas must be comma-separated numbers" in str(bad.exception)


def test_borrowed_fields_lists_and_clashes():
    toy = typer.Typer()
    seen = []

    @toy.command()
    @takes(Options(Toy, only=("size",)), Options(Inner, into="values", lists=("depth",), required=("depth",)))
    def go(*, size: int, values: dict) -> None:
        seen.append((size, [build(Inner, values, depth=d) for d in values["depth"]]))

    @toy.command()
    def other() -> None:
        """A second command."""

    result = CliRunner().invoke(toy, ["go", "--depth", "1,2", "--size", "4"])
    assert result.exit_code == 0, result.output
    assert seen == [(4, [Inner(1), Inner(2)])]
    with pytest.raises(TypeError, match="built without depth"):
        build(Inner, {})
    with pytest.raises(TypeError, match="--size named twice"):
        takes(Options(Toy, only=("size",)))(lambda *, size, other=typer.Option(0, "--size"): None)
    with pytest.raises(TypeError, match="lacks the parameter config"):
        takes(Options(Toy, into="config"))(lambda: None)


def test_stage_commands_keep_their_option_names():
    """A few of the names users type, generated now (tests/test_*.py run the commands themselves)."""
    shown = CliRunner().invoke(app, ["diff", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    for text in ("--whole-words", "--any-tokens", "--alphas", "0,1,2,4,8", "--rank-layers", "--reward"):
        assert text in shown, text
    shown = CliRunner().invoke(app, ["rlhf", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    for text in ("--adaptive-kl", "--fixed-kl", "--score-query", "--score-response", "--mini-batch-size"):
        assert text in shown, text
