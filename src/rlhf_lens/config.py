"""The run config: one `[section]` per stage, presets, TOML in and out, `--set section.key=value`.

Each section is a dataclass whose field docstrings are its help text (`field_docs`, `doc`): the same
text serves `rlhf-lens run --keys` and the stage commands' `--help`. `load_config` validates every
section (types, ranges, choices, cross-field rules) before any stage runs; its messages name
`section.key`.
"""

from __future__ import annotations

import ast
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

from .decompose.config import DecomposeConfig
from .diff.config import DiffConfig
from .errors import UserError
from .harvest.config import HarvestSettings
from .interp.config import ExampleConfig, InterpConfig
from .io import read_toml
from .models_config import TinyModelConfig
from .rlhf.config import PPOConfig
from .sae.config import SAEConfig, SAETraining

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
class ModelSection:
    base: str = "tiny"
    """Base model: a hub id, a local save_pretrained folder, `smollm2`, or `tiny` (built from [tiny])."""
    tuned: str = ""
    """An already tuned model to analyse instead of running PPO; empty: tune the base with [rlhf]."""
    device: str = "cpu"
    """Device for every stage: cpu or cuda."""
    dtype: str = "float32"
    """Model dtype for every stage (both models of a comparison always share it)."""
    seed: int = 0
    """Seed of the run (tiny model, control model, example sampling)."""


@dataclass
class DataSection:
    corpus: str = "pang-lee"
    """Corpus name (imdb, pang-lee, ...) or file: PPO prompts come from its train split (and are evaluated on test)."""
    text_column: str = "text"
    """Text column of a file corpus."""
    test_split: str = "test"
    """Split activations are harvested from (paper: IMDB test)."""


@dataclass
class RewardSection:
    spec: str = "vader"
    """Reward: vader, table:FILE, classifier:MODEL, or sentiment (the offline classifier)."""
    table: str = "vader"
    """Utility table the explanations are scored against (vader or a file)."""
    aggregate: str = "mean"
    """Per-explanation aggregate of the utilities of its words: mean (the authors' notebook) or sum."""


@dataclass
class DivergenceSection:
    top_n: int = 5
    """Number of blocks to analyse (paper: 5)."""
    rank: str = "parameters"
    """How the analysed blocks are chosen: parameters (the paper: most-moved parameters, Frobenius norm) or
    causal (the diff stage's ranking: reward gain of steering the base model by each block's own change)."""


@dataclass
class SAESection(SAETraining):
    """The [sae] section: how every SAE of the run is trained (`sae.config.SAETraining`), and the grid."""

    dict_ratios: list[int] = field(default_factory=lambda: [1, 2])
    """Dictionary sizes as multiples of the MLP width; the first is the small one (paper: 1x and 2x)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One SAE pair per seed: MMCS and scores are reported as mean +- spread over seeds."""


@dataclass
class ControlSection:
    random_init: bool = False
    """Also analyse a randomly initialised model of the base architecture, as a control."""
    placebo: bool = False
    """Also PPO-tune the base with the same [rlhf] settings against the reward's utility table with its values
    shuffled over words (seeded), and diff and decompose it like the real tune: what tuning of that size changes
    whatever the reward (a utility-table reward only: vader or table:FILE)."""


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    data: DataSection = field(default_factory=DataSection)
    reward: RewardSection = field(default_factory=RewardSection)
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


def _section_types() -> dict[str, type]:
    return typing.get_type_hints(RunConfig)


def config_keys() -> list[tuple[str, str, str]]:
    """Every `section.key` a run takes, with its default and its field docstring: (key, default, help)."""
    rows = []
    defaults = RunConfig().to_dict()
    for section, cls in _section_types().items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", json.dumps(defaults[section][f.name]), docs.get(f.name, "")))
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
        section, name = key.strip().split(".", 1)
        data.setdefault(section, {})[name] = _parse_value(value.strip())
    config = config_from_dict(data)
    validate(config)
    return config


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as smollm2 or a path


def config_from_dict(data: dict) -> RunConfig:
    section_types = _section_types()
    sections = {}
    for section, values in data.items():
        if section not in section_types:
            raise UserError(f"unknown config section [{section}]; sections: {', '.join(section_types)}")
        if not isinstance(values, dict):
            raise UserError(f"[{section}] must be a table of key = value")
        cls = section_types[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise UserError(f"unknown key {section}.{key}; keys of [{section}]: {', '.join(hints)}")
            kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
        sections[section] = cls(**kwargs)
    return RunConfig(**sections)


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

EXPLAINERS = ("offline", "openai", "hf:MODEL")
AGGREGATES = ("mean", "sum")
STORE_DTYPES = ("float32", "bfloat16")


def _require(rules: list[tuple[bool, str]]) -> None:
    """Raise the first failing rule's message (each names its `section.key`)."""
    for ok, message in rules:
        if not ok:
            raise UserError(message)


def _in_section(section: str, check, *args) -> None:
    """Run a stage's own check; its message, which starts with the field name, then names `section.field`."""
    try:
        check(*args)
    except UserError as err:
        raise UserError(f"{section}.{err}") from None


def _taken_from_run(section: str, settings, keys: tuple[tuple[str, str], ...], why: str) -> None:
    """Keys of a stage's config that a run sets from another section: refused when set here, naming the owner."""
    defaults = type(settings)()
    for key, owner in keys:
        if getattr(settings, key) != getattr(defaults, key):
            raise UserError(f"{section}.{key} is taken from {owner} in a run{why}; set {owner} instead")


def _check_sae(section: SAESection) -> None:
    """The SAE's own rules (SAEConfig.check), on the largest dictionary of the grid at a stand-in width (the real
    width is known once a model is loaded), its `--flag` names said as `sae.key`."""
    import re

    if section.arch in ("topk", "batchtopk") and (section.k is None or section.k < 1):
        raise UserError(f"sae.k must be >= 1 with sae.arch = \"{section.arch}\" (got {section.k})")
    training = {f.name: getattr(section, f.name) for f in dataclasses.fields(SAETraining)}
    stand_in = SAEConfig(**training, d_in=10**6, dict_size=10**6 * max([1, *section.dict_ratios]))
    try:
        stand_in.check()
    except UserError as err:
        message = re.sub(r"--([a-z0-9-]+)", lambda m: "sae." + m.group(1).replace("-", "_"), str(err))
        raise UserError(message.replace("--arch", "sae.arch")) from None


def validate(config: RunConfig) -> None:
    """Types were checked while parsing; here ranges, choices and cross-field rules, each failure one line
    naming `section.key` and what to set instead. Nothing is loaded: files and models are checked by the run."""
    from .decompose.config import check_decompose_config
    from .diff.config import check_config as check_diff
    from .rlhf.config import check_config, check_device_dtype

    m, h, s, i, e = config.model, config.harvest, config.sae, config.interp, config.examples
    _in_section("model", check_device_dtype, m.device, m.dtype)
    if config.controls.placebo:
        from .rewards import parse_spec

        if parse_spec(config.reward.spec)[0] not in ("vader", "table") or m.tuned:
            raise UserError("controls.placebo shuffles the reward's utility table and tunes with our PPO: it needs "
                            "reward.spec = vader or table:FILE and no model.tuned; set controls.placebo = false")
    if config.rlhf.steps == 0 and not m.tuned:
        raise UserError("rlhf.steps = 0 means no PPO: give the tuned model as model.tuned (or set rlhf.steps >= 1)")
    # steps 0 (a model tuned elsewhere) is checked above; the other PPO settings still apply to its evaluation
    _in_section("rlhf", check_config, dataclasses.replace(config.rlhf, steps=config.rlhf.steps or 1))
    _in_section("diff", check_diff, config.diff)
    _in_section("decompose", check_decompose_config, config.decompose)
    _taken_from_run("diff", config.diff, (("split", "data.test_split"), ("text_column", "data.text_column")), "")
    _check_sae(config.sae)
    _taken_from_run("sae", config.sae, (("device", "model.device"),), " (SAEs train where the models run)")
    _taken_from_run("rlhf", config.rlhf, (("device", "model.device"), ("dtype", "model.dtype"),
                                          ("text_column", "data.text_column")), " (every stage uses it)")
    t = config.tiny
    _require([
        (m.base.strip() != "", "model.base is empty; give a hub id, a folder, smollm2 or tiny"),
        (min(t.layers, t.width, t.heads, t.vocab_size) >= 1 and t.pretrain_steps >= 0,
         "tiny.layers, tiny.width, tiny.heads and tiny.vocab_size must be >= 1, tiny.pretrain_steps >= 0"),
        (t.width % max(t.heads, 1) == 0, f"tiny.width ({t.width}) must be a multiple of tiny.heads ({t.heads})"),
        (config.data.corpus.strip() != "", "data.corpus is empty; give a corpus name (pang-lee, imdb) or a file"),
        (config.reward.aggregate in AGGREGATES,
         f"reward.aggregate must be one of {', '.join(AGGREGATES)} (got {config.reward.aggregate!r})"),
        (config.divergence.top_n >= 1, f"divergence.top_n must be >= 1 (got {config.divergence.top_n})"),
        (config.divergence.rank in ("parameters", "causal"),
         f"divergence.rank must be parameters or causal (got {config.divergence.rank!r})"),
        (h.max_docs >= 0, f"harvest.max_docs must be >= 0 (0: all; got {h.max_docs})"),
        (h.max_tokens >= 1, f"harvest.max_tokens must be >= 1 (got {h.max_tokens})"),
        (h.batch_size >= 1, f"harvest.batch_size must be >= 1 (got {h.batch_size})"),
        (h.shard_tokens >= 1, f"harvest.shard_tokens must be >= 1 (got {h.shard_tokens})"),
        (h.dtype in STORE_DTYPES, f"harvest.dtype must be one of {', '.join(STORE_DTYPES)} (got {h.dtype!r})"),
        (len(s.dict_ratios) >= 2 and len(set(s.dict_ratios)) == len(s.dict_ratios),
         f"sae.dict_ratios needs at least two distinct sizes (MMCS compares the small dictionary with a larger "
         f"one; with one size it is 1.0 by construction), got {s.dict_ratios}"),
        (all(r >= 1 for r in s.dict_ratios), f"sae.dict_ratios must be whole multiples >= 1 (got {s.dict_ratios})"),
        (len(s.seeds) >= 1 and len(set(s.seeds)) == len(s.seeds),
         f"sae.seeds needs at least one seed and no repeats (got {s.seeds})"),
        (i.top_k >= 1, f"interp.top_k must be >= 1 (got {i.top_k})"),
        (i.explainer in ("offline", "openai") or (i.explainer.startswith("hf:") and i.explainer[3:].strip() != ""),
         f"interp.explainer must be one of {', '.join(EXPLAINERS)} (got {i.explainer!r})"),
        (i.explainer != "openai" or i.base_url.startswith(("http://", "https://")),
         f"interp.base_url must be an http(s) URL with interp.explainer = \"openai\" (got {i.base_url!r})"),
        (0.0 <= i.new_feature_threshold <= 1.0,
         f"interp.new_feature_threshold must be in [0, 1] (0: auto; got {i.new_feature_threshold})"),
        (0.0 < i.new_feature_quantile < 1.0,
         f"interp.new_feature_quantile must be in (0, 1) (got {i.new_feature_quantile})"),
        (min(e.n_top, e.max_tokens, e.batch_size) >= 1 and min(e.n_holdout, e.n_random) >= 0,
         "examples.n_top, examples.max_tokens and examples.batch_size must be >= 1, "
         "examples.n_holdout and examples.n_random >= 0"),
        (e.n_holdout + e.n_random >= 1, "examples.n_holdout + examples.n_random must be >= 1 (the simulation score "
                                        "needs held-out texts)"),
    ])
