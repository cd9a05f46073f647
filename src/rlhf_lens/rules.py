"""How a settings check names the setting it refuses: the way its caller spells it.

Each config dataclass writes the rules of its fields once (its `check`, or `check_config` in `rlhf`, `diff`
and `decompose`): one rule per field (`number`, `one_of`, `seed`, or a `(ok, message)` pair of its own), each
message naming that field alone; a rule relating two fields comes after both fields' own rules and names both.
The caller says how a field is spelled in the message: `field_name` (a Python caller), `flag` (a stage command:
`--max-tokens`) or `in_section("harvest")` (a run config: `harvest.max_tokens`). A nested field is named by its
dotted path (`diffsae.k`: `--diffsae-k`, `decompose.diffsae.k`; `nested` spells a nested section's fields).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence

from .errors import UserError

Namer = Callable[[str], str]
"""A field's name (dotted when nested) -> how a message names it."""

Rule = tuple[bool, str]
"""(whether the setting passes, the message naming it when it does not)."""

SEED_MAX = 2**32 - 1
"""The largest seed every generator a seed reaches takes (numpy's RandomState stops here)."""


def field_name(name: str) -> str:
    """A Python caller: the dataclass field itself."""
    return name


def flag(name: str) -> str:
    """A stage command: the option generated for the field (`cli.options`)."""
    return "--" + name.replace(".", "-").replace("_", "-")


def in_section(section: str) -> Namer:
    """A run config: `section.key`."""
    return lambda name: f"{section}.{name}"


def nested(key: Namer, section: str) -> Namer:
    """The fields of a nested section (`diffsae` of [decompose]) as `key` spells them: `key("diffsae.k")`."""
    return lambda name: key(f"{section}.{name}")


def require(rules: Iterable[Rule]) -> None:
    """Raise the first failing rule's message as a UserError."""
    for ok, message in rules:
        if not ok:
            raise UserError(message)


def is_finite_number(value: object) -> bool:
    """An int or a float that is neither NaN nor infinite (a bool is no number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def number(settings: object, name: str, key: Namer, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None, note: str = "", unset: bool = False) -> Rule:
    """The rule of one numeric field of `settings`: a finite number (NaN and infinities are in no range) within the
    bounds given, or None where `unset` allows it (a field whose None means "not set"). Its message names the field as `key` spells it, the range, `note` (what a special value means)
    and the value given: `diff.batch_size must be >= 1 (got 0)`, `rlhf.lr must be a finite number > 0 (got inf)`."""
    value = getattr(settings, name)
    # (bound, how an interval writes it, how a one-sided rule writes it, whether a value passes it)
    low = (at_least, "[", ">=", operator.ge) if at_least is not None else \
        (above, "(", ">", operator.gt) if above is not None else None
    high = (at_most, "]", "<=", operator.le) if at_most is not None else \
        (below, ")", "<", operator.lt) if below is not None else None
    bounds = [b for b in (low, high) if b is not None]
    ok = (unset and value is None) or is_finite_number(value) and all(passes(value, bound) for bound, _, _, passes in bounds)
    if low and high:
        wanted = f"in {low[1]}{_shown(low[0])}, {_shown(high[0])}{high[1]}"
    else:
        bound, _, sign, _ = bounds[0]
        wanted = ("a finite number " if isinstance(value, float) else "") + f"{sign} {_shown(bound)}"
    return ok, f"{key(name)} must be {wanted} ({note + '; ' if note else ''}got {value!r})"


def one_of(settings: object, name: str, key: Namer, choices: Sequence[str]) -> Rule:
    """The rule of a field that takes one of a few names."""
    value = getattr(settings, name)
    return value in choices, f"{key(name)} must be one of {', '.join(choices)} (got {value!r})"


def not_empty(settings: object, name: str, key: Namer, what: str) -> Rule:
    """The rule of a text field that must say something; `what` says what to give."""
    value = getattr(settings, name)
    return isinstance(value, str) and value.strip() != "", f"{key(name)} is empty; give {what}"


def seed(settings: object, name: str, key: Namer) -> Rule:
    """The rule of a seed field: a whole number every generator takes."""
    return number(settings, name, key, at_least=0, at_most=SEED_MAX)


def seeds(settings: object, name: str, key: Namer) -> Rule:
    """The rule of a list of seeds: at least one, each a seed (`seed`), none repeated."""
    values = getattr(settings, name)
    ok = bool(values) and len(set(values)) == len(values) and all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in values)
    return ok, f"{key(name)} needs at least one seed, each in [0, {SEED_MAX}], and no repeats (got {values})"


def without_removed_keys(data: dict, removed: dict[str, str]) -> dict:
    """`data` (a run config as nested dicts) without the keys of older configs in `removed` (dotted key -> what
    replaced it), each one found noted on stderr in one line naming what replaced it; the rest is left as it is."""
    import sys

    for old, replaced_by in removed.items():
        *path, name = old.split(".")
        values = data
        for part in path:
            values = values.get(part) if isinstance(values, dict) else None
        if isinstance(values, dict) and name in values:
            values.pop(name)
            print(f"note: {old} is no longer read: {replaced_by}; ignored", file=sys.stderr)
    return data
