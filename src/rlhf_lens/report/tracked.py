"""A results file as the report reads it: every object and list knows its path in the file (`diff.steering[0]`) and
notes each value handed out, so an error while drawing a section becomes one line naming the innermost field of
the wrong type or missing (`results.json: diff.steering[0] must be an object, not a number`) instead of a
traceback. No schema is written down twice: the sections' own code is the check."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

_KINDS = {"dict": "an object", "list": "a list", "str": "text", "int": "a number", "float": "a number",
          "bool": "true or false", "NoneType": "null"}
_MISSING = object()  # the trail's value for a key that was asked for and not there


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


class _Trail:
    """The most recent values handed out, as (path, value): the one an error is about is nearly always among the last."""

    def __init__(self) -> None:
        self.seen: deque[tuple[str, Any]] = deque(maxlen=256)

    def note(self, path: str, value: Any) -> Any:
        self.seen.append((path, value))
        return value


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class _Object(dict):
    def __init__(self, items: dict, path: str, trail: _Trail) -> None:
        super().__init__((k, _track(v, _child(path, k), trail)) for k, v in items.items())
        self.path, self.trail = path, trail

    def get(self, key: Any, default: Any = None) -> Any:
        return self.trail.note(_child(self.path, key), super().get(key, default))

    def __getitem__(self, key: Any) -> Any:
        if key not in self:
            self.trail.note(_child(self.path, key), _MISSING)
        return self.trail.note(_child(self.path, key), super().__getitem__(key))

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(k, self.trail.note(_child(self.path, k), v)) for k, v in super().items()]

    def values(self) -> list[Any]:  # type: ignore[override]
        return [v for _, v in self.items()]


class _List(list):
    def __init__(self, items: list, path: str, trail: _Trail) -> None:
        super().__init__(_track(v, _child(path, i), trail) for i, v in enumerate(items))
        self.path, self.trail = path, trail

    def __iter__(self):
        for i, value in enumerate(super().__iter__()):
            yield self.trail.note(_child(self.path, i), value)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.trail.note(_child(self.path, i), super(_List, self).__getitem__(i))
                    for i in range(*index.indices(len(self)))]
        value = super().__getitem__(index)
        return self.trail.note(_child(self.path, index % len(self) if index < 0 else index), value)


def _track(value: Any, path: str, trail: _Trail) -> Any:
    if isinstance(value, dict):
        return _Object(value, path, trail)
    if isinstance(value, list):
        return _List(value, path, trail)
    return value


@dataclass(frozen=True)
class Source:
    """Where the content came from, for the error line: the file, what regenerates it, and the part of the paths
    that is not in the file (a diff folder's diff.json is the report's `diff`)."""

    file: str
    regenerate: str
    prefix: str = ""


RUN_RESULTS = Source("results.json", "regenerate it with `rlhf-lens run`")
DIFF_RESULTS = Source("diff.json", "regenerate it with `rlhf-lens diff`", prefix="diff")


class Tracked:
    """A results file's content with every container tracked; `draw(what, render)` runs one section's renderer and
    turns a failure on malformed content into a UserError naming the field."""

    def __init__(self, content: dict, source: Source = RUN_RESULTS) -> None:
        self.trail = _Trail()
        self.content = _track(content, "", self.trail)
        self.source = source

    def draw(self, what: str, render: Callable[..., Any], *args: Any) -> Any:
        """`render(*args)`; an error on malformed content becomes one line naming the field and `what` was drawn."""
        self.trail.seen.clear()
        try:
            return render(*args)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            raise UserError(f"{self.source.file}: {self._culprit(e)} ({what} could not be drawn; nothing was "
                            f"written); {self.source.regenerate}") from None

    def _culprit(self, error: Exception) -> str:
        """The innermost field the error is about, said as what it must be; else the error itself."""
        prefix = self.source.prefix
        seen = [((p[len(prefix):].lstrip(".") or "the whole file") if prefix and p.startswith(prefix) else p, v)
                for p, v in reversed(self.trail.seen)]
        if isinstance(error, KeyError):
            path = next((p for p, v in seen if v is _MISSING), None)
            if path:
                return f"{path} is missing"
        text = str(error)
        types = [t for t in re.findall(r"'(\w+)'", text) if t in _KINDS or t in ("_Object", "_List")]
        types = ["dict" if t == "_Object" else "list" if t == "_List" else t for t in types]
        if isinstance(error, (AttributeError, TypeError)) and types:
            expected = _expected(text)
            # In "unsupported operand type(s) for -: 'int' and 'dict'" the number is the one that fits.
            wrong = next((t for t in types if expected != "a number" or _KINDS[t] != "a number"), types[0])
            path = next((p for p, v in seen if v is not _MISSING and _kind(v) == wrong), None)
            if path:
                return f"{path} must be {expected}, not {_KINDS[wrong]}" if expected else \
                    f"{path} cannot be {_KINDS[wrong]}"
        if isinstance(error, (ValueError, IndexError)) and seen:
            path, value = next(((p, v) for p, v in seen if v is not _MISSING), seen[0])
            return f"{path} holds a value the report cannot read ({str(value)[:60]!r})"
        return f"a field has the wrong type ({type(error).__name__}: {text[:120]})"


def _expected(message: str) -> str | None:
    """What the report needed, from the error's wording."""
    if re.search(r"has no attribute '(get|items|keys|values)'", message):
        return "an object"
    if "not iterable" in message or "has no len()" in message:
        return "a list"
    if "not subscriptable" in message:
        return "an object or a list"
    if re.search(r"operand|not supported between|argument must be|must be real number", message):
        return "a number"
    return None
