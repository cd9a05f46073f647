"""Command options generated from the config dataclasses: each field's type, default and docstring become one
`--field-name` option, so a new field appears in `--help` (as in `run --keys` and the TOML) at once.

A command declares what it takes with `@takes(Options(...), ...)` under `@app.command`:

- `Options(HarvestConfig, into="config", ...)`: every field of the config (nested dataclasses as
  `--section-field`); the command's parameter `config` receives the config built from them.
- `Options(DivergenceSection, only=("top_n",))`: a few fields borrowed from a config the command does not
  build; each reaches the command as the keyword argument named like its option (`--top-n`: `top_n`).

`names` renames an option (`{"model": "--llm-model"}`, a bool as `"--adaptive-kl/--fixed-kl"`); a list field
is one comma-separated option (`--alphas 0,1,2,4,8`); `lists` takes an int field as such a list (train-sae
trains one SAE per `--dict-size` and `--seed`), and the command then builds its configs with `build`.
`TAKEN` records which command takes which field; tests/test_cli_coverage.py checks that every field of every
stage config is taken by a command or named in `run.RUN_ONLY`.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import typer

from ..config import field_docs
from ..errors import UserError
from ..rules import flag

TAKEN: dict[type, dict[str, str]] = defaultdict(dict)
"""config class -> {field: the option that sets it, or which command sets it itself}, over every command."""


def parse_ints(text: str, what: str = "layers") -> list[int]:
    """'3,4,5' -> [3, 4, 5], with a clear error naming `--what`."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated integers, e.g. 3,4,5 (got {text!r})") from None


def parse_floats(text: str, what: str) -> list[float]:
    """'0,1,2.5' -> [0.0, 1.0, 2.5], with a clear error naming `--what`."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated numbers, e.g. 0,1,2,4 (got {text!r})") from None


@dataclass(frozen=True)
class Options:
    """How one command takes the fields of one config dataclass as options."""

    cls: type
    into: str | None = None
    """The command's parameter that receives the built config; None: the fields are passed one by one."""
    only: tuple[str, ...] = ()
    """Only these fields (default: all)."""
    skip: tuple[str, ...] = ()
    """Fields the command sets itself, not options (e.g. an SAE's width, from the activations)."""
    names: dict[str, str] = field(default_factory=dict)
    """Option declaration per field, instead of `rules.flag(field)` (a bool: `--on/--off`)."""
    helps: dict[str, str] = field(default_factory=dict)
    """Help per field, instead of its docstring."""
    required: tuple[str, ...] = ()
    """Fields with no default on the command line."""
    lists: tuple[str, ...] = ()
    """int fields taken as comma-separated lists; then `into` receives the values ({field: value}), for `build`."""


    def declaration(self, path: str, hint) -> str:
        if path in self.names:
            return self.names[path]
        name = flag(path)
        return f"{name}/--no-{name[2:]}" if _base(hint) is bool else name


def takes(*specs: Options) -> Callable:
    """Replace the command's config parameters by one generated option per field (see the module docstring)."""

    def decorate(fn: Callable) -> Callable:
        own = inspect.signature(fn, eval_str=True).parameters
        generated: dict[str, tuple[int, str, object, str]] = {}  # parameter -> (spec index, path, type, option)
        replaced: dict[str, list[inspect.Parameter]] = defaultdict(list)
        options = [_own_option(p) for p in own.values()]
        for i, spec in enumerate(specs):
            for path, hint, default, doc, (owner, leaf) in _leaves(spec.cls(), ""):
                if path in spec.skip:
                    TAKEN[owner][leaf] = f"set by {fn.__name__}"
                if path in spec.skip or (spec.only and path not in spec.only):
                    continue
                decl = spec.declaration(path, hint)
                option = decl.split("/")[0]
                target = spec.into or option[2:].replace("-", "_")  # the command's parameter it replaces
                if target not in own:
                    raise TypeError(f"{fn.__name__} lacks the parameter {target} for {spec.cls.__name__}.{path}")
                as_list = path in spec.lists or typing.get_origin(_base(hint)) is list
                texts = typing.get_args(_base(hint)) == (str,)
                help_text = spec.helps.get(path) or (doc + (" Separated by |." if texts else
                                                            " Comma-separated." if as_list else ""))
                info = typer.Option(... if path in spec.required else _shown(default) if as_list else default, decl,
                                    help=help_text)
                name = f"{spec.cls.__name__}__{path.replace('.', '__')}"
                replaced[target].append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                                          annotation=str if as_list else _base(hint)))
                generated[name] = (i, path, hint, option)
                options.append(option)
                TAKEN[owner][leaf] = option
        clashes = sorted({o for o in options if o and options.count(o) > 1})
        if clashes:
            raise TypeError(f"{fn.__name__}: {', '.join(clashes)} named twice; rename a field's option with `names`")
        params = []
        for p in own.values():
            params += replaced.get(p.name) or [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

        def command(**kwargs):
            values: list[dict] = [{} for _ in specs]
            for name, (i, path, hint, option) in generated.items():
                value = _from_cli(kwargs.pop(name), hint, option[2:], path in specs[i].lists)
                if specs[i].into is None:
                    kwargs[option[2:].replace("-", "_")] = value
                else:
                    values[i][path] = value
            for spec, taken in zip(specs, values):
                if spec.into is not None:
                    kwargs[spec.into] = taken if spec.lists else _nested(spec.cls(), taken)
            return fn(**kwargs)

        command.__name__, command.__doc__, command.__module__ = fn.__name__, fn.__doc__, fn.__module__
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _own_option(p: inspect.Parameter) -> str | None:
    """The option a command's own parameter is (None: an argument or a config parameter)."""
    if isinstance(p.default, typer.models.OptionInfo):
        return (p.default.param_decls or (flag(p.name),))[0].split("/")[0]
    return None


def build(cls: type, values: dict, **more):
    """`cls` from option values and the fields the command sets (`more`); a field missing from both is a bug here,
    not a silent default."""
    given = {**values, **more}
    missing = [path for path, *_ in _leaves(cls(), "") if path not in given]
    if missing:
        raise TypeError(f"{cls.__name__} built without {', '.join(missing)}")
    return _nested(cls(), given)


# --- the dataclass side ------------------------------------------------------------------------


def _leaves(settings, prefix: str) -> Iterator[tuple[str, type, object, str, tuple[type, str]]]:
    """(dotted path, type, default, docstring, (declaring class, name)) of every field, nested ones walked."""
    cls = type(settings)
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], value, docs.get(f.name, ""), (cls, f.name)


def _nested(defaults, values: dict):
    """`defaults` with dotted `values` set, nested dataclasses from their own defaults."""
    top: dict[str, object] = {}
    inner: dict[str, dict] = defaultdict(dict)
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            inner[head][rest] = value
        else:
            top[head] = value
    top.update({head: _nested(getattr(defaults, head), sub) for head, sub in inner.items()})
    return dataclasses.replace(defaults, **top)


TEXT_SEPARATOR = " | "
"""How a list of texts is written as one option (texts hold commas): --templates 'The movie was | I found it'."""


def _base(hint):
    """`X | None` -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _shown(default) -> str | None:
    """A list default as its option text: [0.0, 1.0] -> '0,1'."""
    if default is None:
        return None
    items = default if isinstance(default, list) else [default]
    if any(isinstance(x, str) for x in items):
        return TEXT_SEPARATOR.join(items)
    return ",".join(str(int(x)) if float(x).is_integer() else repr(x) for x in items)


def _from_cli(value, hint, what: str, as_list: bool):
    """An option's value as the field's type (comma-separated text -> a list)."""
    base = _base(hint)
    if as_list:
        return parse_ints(value, what)
    if typing.get_origin(base) is not list:
        return value
    if value is None or (base is not hint and not value.strip()):
        return None  # an optional list left empty: its default, None
    (item,) = typing.get_args(base)
    if item is str:
        return [part.strip() for part in value.split(TEXT_SEPARATOR.strip()) if part.strip()]
    return parse_ints(value, what) if item is int else parse_floats(value, what)


def _refuse_clashes(command: str, options: list[str]) -> None:
    seen = [o for o in options if options.count(o) > 1]
    if seen:
        raise TypeError(f"{command}: options {sorted(set(seen))} come from two fields; rename one with `names`")
