"""Utility tables (word -> value), the one tokenisation they are looked up with (`words`), and the table reward.

`vader` is the VADER lexicon's mean valence per entry, read from the installed vaderSentiment package;
`table:FILE` a CSV, TSV or JSON file. reward = clip(sum of U(w) over `words(text)` / scale, -clip, +clip).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserError

DEFAULT_SCALE = 5.0
DEFAULT_CLIP = 10.0


# --- words ---------------------------------------------------------------------------------

# Inside a whitespace chunk, words are separated by anything that is not a letter, digit,
# apostrophe or hyphen ("good/bad" -> good, bad; "can't" and "well-made" stay whole).
_SEPARATORS = re.compile(r"[^\w'-]+|_+")
_SENTENCE_END = ".,;!?"


def words(text: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """The words of `text` that a utility table is looked up with (the one tokenisation of rlhf-lens).

    Lower-case; curly apostrophes become '; split on whitespace. A chunk that is itself a
    punctuated entry of the VADER lexicon (emoticons such as ":)", ":-d" or "(:") or of `keep`,
    possibly followed by sentence punctuation (":)." or ":)!"), is one word. Any other chunk is
    cut at characters that are not letters, digits, apostrophes or hyphens, and each piece
    loses leading and trailing apostrophes and hyphens; empty pieces are dropped.
    `keep`: further entries to keep whole (`special_entries(table)` of a user table).
    """
    vader = _vader_special()
    out: list[str] = []
    for chunk in text.lower().replace("\u2019", "'").split():
        trimmed = chunk.rstrip(_SENTENCE_END)
        if chunk in vader or chunk in keep:
            out.append(chunk)
        elif trimmed and (trimmed in vader or trimmed in keep):
            out.append(trimmed)
        else:
            out.extend(_split_chunk(chunk))
    return out


def _split_chunk(chunk: str) -> list[str]:
    return [piece for piece in (p.strip("'-") for p in _SEPARATORS.split(chunk)) if piece]


def special_entries(table: Iterable[str]) -> frozenset[str]:
    """Entries the splitting rule would cut or trim (":)", "(:", "$:"), which `words` keeps whole.

    Entries holding whitespace ("can't stand") are left out: a single word never equals them.
    """
    return frozenset(e for e in table if e and not any(c.isspace() for c in e) and _split_chunk(e) != [e])


@functools.cache
def _vader_special() -> frozenset[str]:
    return special_entries(_cached_vader_dict())


# --- utility tables ------------------------------------------------------------------------


def vader_lexicon_path() -> Path:
    """`vader_lexicon.txt` inside the installed vaderSentiment package (found without importing it)."""
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or spec.origin is None:
        raise UserError("the vader table needs the vaderSentiment package; run `pip install vaderSentiment`")
    path = Path(spec.origin).parent / "vader_lexicon.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall vaderSentiment")
    return path


def load_utility_table(spec: str) -> dict[str, float]:
    """A utility table word -> value: `vader` (the lexicon's mean valence) or a CSV/TSV/JSON file.

    Words are lower-cased; when two rows give the same word, the later one wins (as
    vaderSentiment's own loader does with the lexicon's few repeated entries).
    """
    if spec == "vader":
        return dict(_cached_vader_dict())
    path = Path(spec[len("table:"):] if spec.startswith("table:") else spec)
    if not path.is_file():
        raise UserError(f"utility table {path} does not exist; give vader or a CSV/TSV/JSON file of word, value")
    return _read_table(path)


@functools.cache
def _cached_vader_dict() -> dict[str, float]:  # callers copy it: the cache must not be mutated
    return _read_table(vader_lexicon_path(), delimiter="\t")


def _read_table(path: Path, delimiter: str | None = None) -> dict[str, float]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the table as UTF-8") from None
    if suffix == ".json":
        rows = _json_rows(path, text)
    else:
        if delimiter is None:
            delimiter = "," if suffix == ".csv" else "\t"
        rows = []
        for n, cells in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1):
            if not cells or not "".join(cells).strip():
                continue
            if len(cells) < 2:
                raise UserError(f"{path}:{n}: expected word{delimiter!r}value, got {delimiter.join(cells)[:60]!r}")
            if n == 1 and re.fullmatch(r"[A-Za-z_ ]+", cells[1].strip()):
                continue  # a header line such as "word,value"
            rows.append((f"{path}:{n}", cells[0], cells[1]))
    table: dict[str, float] = {}
    for where, word, value in rows:
        word = str(word).strip().lower()
        if not word:
            raise UserError(f"{where}: empty word; every row needs a word and a value")
        table[word] = _number(value, where, word)
    if not table:
        raise UserError(f"{path}: the table is empty; give rows of word, value")
    return table


def _json_rows(path: Path, text: str) -> list[tuple[str, object, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); give an object word -> value") from None
    if isinstance(data, dict):
        return [(f"{path}: entry {k!r}", k, v) for k, v in data.items()]
    if isinstance(data, list):
        rows = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and "word" in item and "value" in item:
                rows.append((f"{path}: item {i}", item["word"], item["value"]))
            elif isinstance(item, list | tuple) and len(item) == 2:
                rows.append((f"{path}: item {i}", item[0], item[1]))
            else:
                raise UserError(f"{path}: item {i} is not [word, value] or {{\"word\": ..., \"value\": ...}}")
        return rows
    raise UserError(f"{path}: expected a JSON object word -> value or a list of [word, value]")


def _number(value: object, where: str, word: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserError(f"{where}: value of {word!r} is not a number ({value!r}); fix that row")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where}: value of {word!r} is not a number ({str(value)[:30]!r}); fix that row") from None
    if not math.isfinite(number):
        raise UserError(f"{where}: value of {word!r} is not finite ({value!r}); fix that row")
    return number


class UtilityTableReward:
    """clip(sum of U(w) over the words of a text / scale, -clip, +clip); unknown words count 0."""

    def __init__(self, table: dict[str, float], scale: float = DEFAULT_SCALE, clip: float | None = DEFAULT_CLIP,
                 name: str = "table"):
        if scale <= 0 or (clip is not None and clip <= 0):
            raise UserError(f"reward scale and clip must be positive (got scale={scale}, clip={clip})")
        self.table, self.scale, self.clip = table, float(scale), clip
        self._keep = special_entries(table)
        self.info = {"kind": "table", "table": name, "entries": len(table), "scale": self.scale, "clip": clip}

    def __call__(self, texts: list[str]) -> list[float]:
        return [self.score(text) for text in texts]

    def score(self, text: str) -> float:
        total = sum(self.table.get(w, 0.0) for w in words(text, self._keep)) / self.scale
        return total if self.clip is None else min(max(total, -self.clip), self.clip)
