"""Dataclass configs: field docstrings are the `--help` text, TOML in and out."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap


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
    """The help text of one field (for `typer.Option(help=...)`); `cls` may be a `ConfigDefaults`."""
    if isinstance(cls, ConfigDefaults):
        return cls.docs.get(name, "")
    return field_docs(cls).get(name, "")


class ConfigDefaults:
    """A dataclass's field defaults and help texts, read from its module's source without running it.

    The CLI builds every command's options (defaults and `--help` text) when it loads; importing
    the stage modules for that would import torch and make `rlhf-lens --help` take a second or more.
    Attribute access gives a field's default, like the class itself; `doc()` accepts it too.
    """

    def __init__(self, name: str, defaults: dict, docs: dict[str, str]):
        self.__name__ = name
        self._defaults = defaults
        self.docs = docs

    def __getattr__(self, field: str):
        try:
            return self.__dict__["_defaults"][field]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('__name__')} has no field {field!r}") from None

    def __repr__(self) -> str:
        return f"ConfigDefaults({self.__name__})"


_NO_DEFAULT = object()


@functools.cache
def config_defaults(module: str, name: str):
    """Defaults and help of dataclass `name` in `module` (e.g. "rlhf_lens.rlhf", "PPOConfig"), torch-free.

    Reads the class from the module's source file when every default is a literal; otherwise
    (or when the module is already imported) returns the class itself, so the result is never wrong,
    only sometimes slower.
    """
    import importlib
    import sys
    from pathlib import Path

    def real():
        return getattr(importlib.import_module(module), name)

    if module in sys.modules:
        return real()
    package, _, rest = module.partition(".")
    if package != __package__:
        return real()
    path = Path(__file__).parent.joinpath(*rest.split(".")).with_suffix(".py")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return real()
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    if len(classes) != 1 or classes[0].bases or classes[0].keywords:
        return real()
    cls = classes[0]
    if [ast.unparse(d) for d in cls.decorator_list] not in (["dataclass"], ["dataclasses.dataclass"]):
        return real()
    defaults: dict = {}
    docs: dict[str, str] = {}
    body = cls.body
    for stmt, nxt in zip(body, [*body[1:], None]):
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(stmt.annotation):
            continue
        field = stmt.target.id
        if stmt.value is None:
            defaults[field] = _NO_DEFAULT
        else:
            try:
                defaults[field] = ast.literal_eval(stmt.value)
            except ValueError:  # field(default_factory=...), a constant from elsewhere: ask the class
                return real()
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[field] = " ".join(nxt.value.value.split())
    defaults = {k: v for k, v in defaults.items() if v is not _NO_DEFAULT}
    return ConfigDefaults(name, defaults, docs)
