"""Tokens as text, and the word ("unit") each token belongs to.

Every token is shown as its *piece*: the text it adds when appended to a fixed anchor
token, so leading spaces survive for every tokenizer family (byte-level BPE and
SentencePiece alike). A record's text is the concatenation of its pieces.

A *unit* is what a utility table or an explanation talks about: a word as
`rewards.words` cuts it (lower-cased, punctuation stripped), or a run of punctuation
left over between words (kept, since tables such as VADER list emoticons like ":)").
A token belongs to the unit holding its first non-space character, so the pieces
"wonder" + "ful" of "wonderful" both belong to the word "wonderful"; a token of only
whitespace belongs to no unit (key "").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_CHUNK = re.compile(r"\S+")
_PUNCT = re.compile(r"[^\w\s]+")


def _words(text: str, keep: frozenset[str] = frozenset()) -> list[str]:
    from ..rewards import words

    return words(text, keep)


class TokenDecoder:
    """Token id -> piece, cached per id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}
        anchor_ids = tokenizer.encode("a", add_special_tokens=False)
        self._anchor = anchor_ids[:1]
        self._anchor_text = tokenizer.decode(self._anchor) if self._anchor else ""

    def piece(self, token_id: int) -> str:
        token_id = int(token_id)
        cached = self._pieces.get(token_id)
        if cached is None:
            both = self.tokenizer.decode(self._anchor + [token_id])
            if self._anchor and both.startswith(self._anchor_text):
                cached = both[len(self._anchor_text):]
            else:  # an odd tokenizer: fall back to decoding the token alone
                cached = self.tokenizer.decode([token_id])
            self._pieces[token_id] = cached
        return cached

    def pieces(self, token_ids) -> list[str]:
        return [self.piece(t) for t in token_ids]


@dataclass(frozen=True)
class Unit:
    key: str
    """The word (lower-cased, punctuation stripped) or the punctuation run."""
    start: int
    end: int


def units(text: str, keep: frozenset[str] = frozenset()) -> list[Unit]:
    """Words and punctuation runs of `text`, in order, with their character spans.

    `keep`: punctuated table entries that are one word (`rewards.special_entries(table)`)."""
    found: list[Unit] = []
    for m in _CHUNK.finditer(text):
        chunk, base = m.group(), m.start()
        lower = chunk.lower()
        cursor = 0
        for word in _words(chunk, keep):
            at = lower.find(word, cursor)
            if at < 0:  # words() changed the word beyond lower-casing: it owns the rest of the chunk
                found.append(Unit(word, base + cursor, base + len(chunk)))
                cursor = len(chunk)
                continue
            found.extend(_punctuation(chunk[cursor:at], base + cursor))
            found.append(Unit(word, base + at, base + at + len(word)))
            cursor = at + len(word)
        found.extend(_punctuation(chunk[cursor:], base + cursor))
    return found


def _punctuation(text: str, base: int) -> list[Unit]:
    return [Unit(m.group(), base + m.start(), base + m.end()) for m in _PUNCT.finditer(text)]


def token_units(tokens: list[str], keep: frozenset[str] = frozenset()) -> tuple[list[int], list[Unit]]:
    """For each token, the index of its unit in the record's units (-1: whitespace only), and the units."""
    text = "".join(tokens)
    found = units(text, keep)
    owner = [-1] * len(text)
    for i, unit in enumerate(found):
        for c in range(unit.start, unit.end):
            owner[c] = i
    index: list[int] = []
    start = 0
    for token in tokens:
        end = start + len(token)
        unit = -1
        for c in range(start, end):
            if not text[c].isspace():
                unit = owner[c]
                if unit < 0:  # a character words() dropped (e.g. an apostrophe): take the next unit in the token
                    continue
                break
        index.append(unit)
        start = end
    return index, found


def token_keys(tokens: list[str], keep: frozenset[str] = frozenset()) -> list[str]:
    """The unit key of every token ("" for whitespace-only tokens)."""
    index, found = token_units(tokens, keep)
    return [found[i].key if i >= 0 else "" for i in index]


def unit_counts(text: str) -> Counter:
    """How often each unit occurs in `text` (words by `rewards.words`, punctuation runs by regex)."""
    counts = Counter(_words(text))
    counts.update(_PUNCT.findall(text))
    return counts


def show_token(token: str) -> str:
    """A token as one visible line: newlines and tabs escaped, whitespace-only tokens made visible."""
    shown = token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if shown and not shown.strip():
        shown = shown.replace(" ", "\u2423")
    return shown or "\u2205"
