"""A results file as the report reads it: every value knows its path in the file (`diff.steering[0]`), so an error
while drawing a section becomes one line naming the innermost field of the wrong type or missing
(`results.json: diff.steering[0] must be an object, not a number`) instead of a traceback. No schema is written
down twice: the sections' own code is the check.

Objects, lists, texts and numbers are subclasses of dict, list, str, int and float that carry their path; they
render exactly as the plain values do. An `AttributeError` names the very value it failed on (`.obj`); for other
errors the values handed out last are searched (`_Trail`), since a failing value is nearly always among them."""

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


class _Text(str):
    path: str
    is_key = False  # a key handed out by iterating an object: the object stood where a list belongs

    def __iter__(self):
        # No section reads a text character by character: a text iterated stood where a list belongs.
        raise TypeError("'str' object is not iterable")


class _Int(int):
    path: str


class _Float(float):
    path: str


_PLAIN = {"_Text": "str", "_Int": "int", "_Float": "float", "_Object": "dict", "_List": "list"}


def _kind(value: Any) -> str:
    name = type(value).__name__
    return _PLAIN.get(name, name)


class _Trail:
    """The most recent values handed out, as (path, value)."""

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

    def __iter__(self):
        for key in super().__iter__():
            shown = _Text(key)
            shown.path, shown.is_key = self.path, True
            yield self.trail.note(self.path, shown)

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
            return [self[i] for i in range(*index.indices(len(self)))]
        value = super().__getitem__(index)
        return self.trail.note(_child(self.path, index % len(self) if index < 0 else index), value)


def _track(value: Any, path: str, trail: _Trail) -> Any:
    if isinstance(value, dict):
        return _Object(value, path, trail)
    if isinstance(value, list):
        return _List(value, path, trail)
    kind = {str: _Text, int: _Int, float: _Float}.get(type(value))  # bool and None cannot be subclassed
    if kind is None:
        return value
    tracked = kind(value)
    tracked.path = path
    return tracked


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
    """A results file's content with every value tracked; `draw(what, render, *args)` runs one section's renderer
    and turns a failure on malformed content into a UserError naming the field."""

    def __init__(self, content: dict, source: Source = RUN_RESULTS) -> None:
        self.trail = _Trail()
        self.content = _track(content, "", self.trail)
        self.source = source

    def draw(self, what: str, render: Callable[..., Any], *args: Any) -> Any:
        """`render(*args)`; an error on malformed content becomes one line naming the field and what was drawn."""
        self.trail.seen.clear()
        try:
            return render(*args)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            raise UserError(f"{self.source.file}: {self._culprit(e)} ({what} could not be drawn; nothing was "
                            f"written); {self.source.regenerate}") from None

    def _path(self, path: str) -> str:
        """A path as it is in the file (without the prefix the report put it under)."""
        prefix = self.source.prefix
        if prefix and (path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")):
            return path[len(prefix):].lstrip(".") or "the whole file"
        return path

    def _culprit(self, error: Exception) -> str:
        """The innermost field the error is about, said as what it must be; else the error itself."""
        text = str(error)
        expected = _expected(text)
        failed = getattr(error, "obj", None) if isinstance(error, AttributeError) else None
        if hasattr(failed, "path"):
            if getattr(failed, "is_key", False):
                return f"{self._path(failed.path)} must be a list, not an object"
            return _must(self._path(failed.path), expected, _kind(failed))
        seen = [(self._path(p), v) for p, v in reversed(self.trail.seen)]
        if isinstance(error, KeyError):
            path = next((p for p, v in seen if v is _MISSING), None)
            if path:
                return f"{path} is missing"
        types = [_PLAIN.get(t, t) for t in re.findall(r"'(\w+)'", text)]
        types = [t for t in types if t in _KINDS]
        if isinstance(error, (AttributeError, TypeError)) and types:
            # In "unsupported operand type(s) for -: 'int' and 'dict'" the number is the one that fits.
            wrong = next((t for t in types if expected != "a number" or _KINDS[t] != "a number"), types[0])
            found = next(((p, v) for p, v in seen if v is not _MISSING and _kind(v) == wrong), None)
            if found:
                if getattr(found[1], "is_key", False):
                    return f"{found[0]} must be a list, not an object"
                return _must(found[0], expected, wrong)
        if isinstance(error, (ValueError, IndexError)) and seen:
            path, value = next(((p, v) for p, v in seen if v is not _MISSING), seen[0])
            return f"{path} holds a value the report cannot read ({str(value)[:60]!r})"
        return f"a field has the wrong type ({type(error).__name__}: {text[:120]})"


def _must(path: str, expected: str | None, kind: str) -> str:
    if expected:
        return f"{path} must be {expected}, not {_KINDS.get(kind, kind)}"
    return f"{path} cannot be {_KINDS.get(kind, kind)}"


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
