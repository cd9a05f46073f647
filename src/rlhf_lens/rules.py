"""How a settings check names the setting it refuses: the way its caller spells it.

Each config dataclass writes the rules of its fields once (its `check`, or `check_config` in `rlhf`, `diff`
and `decompose`). The caller says how a field is spelled in the message: `field_name` (a Python caller),
`flag` (a stage command: `--max-tokens`) or `in_section("harvest")` (a run config: `harvest.max_tokens`).
A nested field is named by its dotted path (`diffsae.k`: `--diffsae-k`, `decompose.diffsae.k`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import UserError

Namer = Callable[[str], str]
"""A field's name (dotted when nested) -> how a message names it."""


def field_name(name: str) -> str:
    """A Python caller: the dataclass field itself."""
    return name


def flag(name: str) -> str:
    """A stage command: the option generated for the field (`cli.options`)."""
    return "--" + name.replace(".", "-").replace("_", "-")


def in_section(section: str) -> Namer:
    """A run config: `section.key`."""
    return lambda name: f"{section}.{name}"


def require(rules: Iterable[tuple[bool, str]]) -> None:
    """Raise the first failing rule's message as a UserError."""
    for ok, message in rules:
        if not ok:
            raise UserError(message)
