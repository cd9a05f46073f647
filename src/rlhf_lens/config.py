"""The run config: one `[section]` per stage, presets, TOML in and out, `--set section.key=value`.

Each section is a dataclass whose field docstrings are its help text (`field_docs`, `doc`): the same
text serves `rlhf-lens run --keys` and the stage commands' `--help`. A field that is itself a dataclass is
a nested section (`[decompose.diffsae]`, `--set decompose.diffsae.k=8`). `load_config` validates every
section (types, ranges, choices, cross-field rules) before any stage runs, with the rules each section's
dataclass holds (`rules.py`); its messages name `section.key`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
import json
import os
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .decompose.config import REMOVED_KEYS, DecomposeConfig, check_decompose_config
from .diff.config import DIFF_REMOVED_KEYS, DiffConfig
from .diff.config import check_config as check_diff
from .errors import UserError
from .harvest.config import HarvestSettings
from .inspect_rm.config import InspectRMConfig
from .inspect_rm.config import check_config as check_inspect_rm
from .interp.config import ExampleConfig, InterpConfig
from .io import read_toml
from .models_config import TinyModelConfig
from .preferences.config import PreferenceConfig
from .preferences.config import check_config as check_preferences
from .rlhf.config import PPOConfig
from .rlhf.config import check_config as check_ppo
from .rm.config import RMConfig
from .rm.config import check_config as check_rm
from .rules import in_section, require, seeds, without_removed_keys
from .sections import (
    ControlSection,
    DataSection,
    DivergenceSection,
    GoldSection,
    ModelSection,
    RewardSection,
    SAESection,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "config.toml"
"""The resolved config a run folder holds."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def doc(cls: type, name: str) -> str:
    """The help text of one field (for `typer.Option(help=...)`)."""
    return field_docs(cls).get(name, "")


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    data: DataSection = field(default_factory=DataSection)
    reward: RewardSection = field(default_factory=RewardSection)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    inspect_rm: InspectRMConfig = field(default_factory=InspectRMConfig)
    gold: GoldSection = field(default_factory=GoldSection)
    rlhf: PPOConfig = field(default_factory=PPOConfig)
    divergence: DivergenceSection = field(default_factory=DivergenceSection)
    diff: DiffConfig = field(default_factory=DiffConfig)
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)
    harvest: HarvestSettings = field(default_factory=HarvestSettings)
    sae: SAESection = field(default_factory=SAESection)
    interp: InterpConfig = field(default_factory=InterpConfig)
    examples: ExampleConfig = field(default_factory=ExampleConfig)
    controls: ControlSection = field(default_factory=ControlSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RENAMED_KEYS = {
    "interp.llm_model": "interp.llm.model",
    "interp.base_url": "interp.llm.base_url",
    **{f"decompose.diffsae_{k}": f"decompose.diffsae.{k}"
       for k in ("arch", "expansion", "k", "seeds", "epochs", "lr", "batch_size", "top")},
    **{f"decompose.steer_{k}": f"decompose.steer.{k}" for k in ("latents", "norm", "alpha", "random")},
    **{f"decompose.shift_{k}": f"decompose.shift.{k}" for k in ("rank_by", "top")},  # see decompose.config REMOVED_KEYS
    **{f"decompose.crosscoder_{k}": f"decompose.crosscoding.{k}"
       for k in ("arch", "expansion", "k", "l1", "steps", "lr", "batch_size", "rows")},
    "decompose.scaling_threshold": "decompose.crosscoding.scaling_threshold",
    "decompose.norm_threshold": "decompose.crosscoding.norm_threshold",
}
"""Keys of older configs (a run folder's config.toml included) -> where they live now; still read."""


def config_keys() -> list[tuple[str, str, str]]:
    """Every `section.key` a run takes (`section.sub.key` in a nested section), with its default and its field
    docstring: (key, default, help)."""
    rows = []

    def walk(settings, where: str) -> None:
        docs = field_docs(type(settings))
        for f in dataclasses.fields(settings):
            value, key = getattr(settings, f.name), f"{where}.{f.name}".lstrip(".")
            if dataclasses.is_dataclass(value):
                walk(value, key)
            else:
                rows.append((key, json.dumps(value), docs.get(f.name, "")))

    walk(RunConfig(), "")
    return rows


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("rlhf_lens.presets").iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(preset_names())} (see `rlhf-lens presets`)")
    return resources.files("rlhf_lens.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def preset_description(name: str) -> str:
    first = preset_text(name).splitlines()[0] if preset_text(name) else ""
    return first.lstrip("# ").strip()


def load_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: list[str] = ()) -> RunConfig:
    """Build a RunConfig from defaults, then a preset or a TOML file, then `key=value` overrides."""
    if preset and config_file:
        raise UserError("give either --preset or --config, not both")
    data: dict = {}
    if preset:
        data = tomllib.loads(preset_text(preset))
    elif config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        data = read_toml(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set takes section.key=value (e.g. rlhf.steps=10), got {item!r}")
        _put(data, key.strip(), _parse_value(value.strip()))
    config = config_from_dict(data)
    validate(config)
    return config


def _put(data: dict, key: str, value) -> None:
    """Set a dotted `key` in nested tables."""
    *path, name = key.split(".")
    for i, part in enumerate(path):
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise UserError(f"--set {key}: {'.'.join(path[:i + 1])} is a setting, not a section")
    data[name] = value


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as smollm2 or a path


def config_from_dict(data: dict) -> RunConfig:
    return _settings(RunConfig(), _renamed(data), "")


def _renamed(data: dict) -> dict:
    """A copy of `data` with old keys (`RENAMED_KEYS`) moved to their new place; both given is refused."""
    data = copy.deepcopy(data)
    for old, new in RENAMED_KEYS.items():
        section, name = old.split(".")
        values = data.get(section)
        if isinstance(values, dict) and name in values:
            _, sub, leaf = new.split(".")
            nested = values.setdefault(sub, {})
            if not isinstance(nested, dict) or leaf in nested:
                raise UserError(f"{old} is the old name of {new}; give {new} only")
            nested[leaf] = values.pop(name)
    return without_removed_keys(data, {**DIFF_REMOVED_KEYS, **REMOVED_KEYS})


def _settings(defaults, values: dict, where: str):
    """`defaults` (a dataclass) with `values` set, a nested section (a dataclass field) in turn from its own
    defaults; `where` is the dotted path for messages."""
    hints = typing.get_type_hints(type(defaults))
    changes = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in hints:
            if not where:
                raise UserError(f"unknown config section [{key}]; sections: {', '.join(hints)}")
            raise UserError(f"unknown key {name}; keys of [{where}]: {', '.join(hints)}")
        current = getattr(defaults, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"[{name}] must be a table of key = value")
            changes[key] = _settings(current, value, name)
        else:
            changes[key] = _coerce(name, value, hints[key])
    return dataclasses.replace(defaults, **changes)


def _coerce(name: str, value, hint):
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"{name} must be a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(name, value, args[0])
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
        return value
    return value


def config_toml(config: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(_drop_none(config.to_dict()))


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


# --- validation: every section in full, before any stage runs ----------------------------------


def _taken_from_run(section: str, settings, keys: tuple[tuple[str, str], ...], why: str) -> None:
    """Keys of a stage's config that a run sets from another section: refused when set here, naming the owner."""
    defaults = type(settings)()
    for key, owner in keys:
        if getattr(settings, key) != getattr(defaults, key):
            raise UserError(f"{section}.{key} is taken from {owner} in a run{why}; set {owner} instead")


def validate(config: RunConfig) -> None:
    """Types were checked while parsing; here ranges, choices and cross-field rules (each section's own, from its
    dataclass, then the run's), each failure one line naming `section.key` and what to set instead. Nothing is
    loaded: files and models are checked by the run."""
    m = config.model
    m.check(in_section("model"))
    require([seeds(config.controls, "placebo_seeds", in_section("controls"))])
    if config.controls.placebo:
        from .rewards import parse_spec
        if parse_spec(config.reward.spec)[0] not in ("vader", "table") or m.tuned:
            raise UserError("controls.placebo shuffles the reward's utility table and tunes with our PPO: it needs "
                            "reward.spec = vader or table:FILE and no model.tuned; set controls.placebo = false")
    _check_reward_model(config)
    if config.rlhf.steps == 0 and not m.tuned:
        raise UserError("rlhf.steps = 0 means no PPO: give the tuned model as model.tuned (or set rlhf.steps >= 1)")
    # steps 0 (a model tuned elsewhere) is checked above; the other PPO settings still apply to its evaluation
    check_ppo(dataclasses.replace(config.rlhf, steps=config.rlhf.steps or 1), in_section("rlhf"))
    check_diff(config.diff, in_section("diff"))
    check_decompose_config(config.decompose, in_section("decompose"), diff_saves_activations=config.diff.save_activations)
    _taken_from_run("diff", config.diff, (("split", "data.test_split"), ("text_column", "data.text_column")), "")
    config.sae.check(in_section("sae"))
    _taken_from_run("sae", config.sae, (("device", "model.device"),), " (SAEs train where the models run)")
    _taken_from_run("rlhf", config.rlhf, (("device", "model.device"), ("dtype", "model.dtype"),
                                          ("text_column", "data.text_column")), " (every stage uses it)")
    for section in ("tiny", "data", "reward", "gold", "divergence", "harvest", "interp", "examples"):
        getattr(config, section).check(in_section(section))


def trains_reward_model(config: RunConfig) -> bool:
    """`reward.spec = "rm"`: the run makes preference pairs ([preferences]), trains its reward model on them ([rm])
    and tunes against it."""
    return config.reward.spec.strip() == "rm"


def _check_reward_model(config: RunConfig) -> None:
    """[preferences] and [rm] when the run trains its reward model; settings there that a run would not read are
    refused, naming them (a set bias with a reward that is not the run's RM would silently do nothing)."""
    prefs = config.preferences
    check_preferences(prefs, in_section("preferences"))
    check_rm(config.rm, in_section("rm"))
    check_inspect_rm(config.inspect_rm, in_section("inspect_rm"))
    if not trains_reward_model(config):
        for section, settings in (("preferences", prefs), ("rm", config.rm), ("inspect_rm", config.inspect_rm)):
            changed = [f.name for f in dataclasses.fields(settings) if getattr(settings, f.name) != getattr(
                type(settings)(), f.name)]
            if changed:
                raise UserError(f"{section}.{changed[0]} is set but reward.spec is {config.reward.spec!r}: "
                                f"[{section}] is read only when the run trains its reward model (reward.spec = rm)")
        return
    if config.model.tuned:
        raise UserError("reward.spec = rm trains a reward model to tune against, but model.tuned names a model tuned "
                        "elsewhere; give its reward model as reward.spec = rm:PATH, or leave model.tuned empty")
    if not prefs.file and not config.gold.spec:
        raise UserError("reward.spec = rm samples preference pairs and labels them by the gold, but gold.spec is "
                        "empty; set gold.spec (e.g. vader), or give pairs as preferences.file")
    if prefs.file and (prefs.bias or prefs.label_noise):
        setting = "bias" if prefs.bias else "label_noise"
        raise UserError(f"preferences.{setting} shapes the labels of sampled pairs, but preferences.file is read as "
                        f"it is; leave preferences.{setting} unset with a pair file")
