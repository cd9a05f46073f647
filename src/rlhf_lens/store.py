"""The activation store: MLP activations on disk, in safetensors shards, plus a manifest.

Layout (see docs/store.md): `DIR/manifest.json` and `DIR/shard-00000.safetensors`, ... Each
shard holds, for every harvested layer L, `layer{L}` `[n, d]` (float32 or bfloat16), and
`token_ids` int32 `[n]`, `doc` int64 `[n]`, `pos` int32 `[n]`: one row per non-padding token,
ordered by (doc, pos), the same rows for every layer. Documents never straddle shards.

Readers load one layer of one shard at a time, so memory stays bounded by a few shards
whatever the size of the store. `StoreWriter` is the one writer of the format (harvest, the diff's
paired stores and the Δ store all write through it).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, first_line
from .harvest.config import STORE_DTYPES as STORE_DTYPE_NAMES
from .io import read_json, save_safetensors, write_json

FORMAT = "rlhf-lens.activations"
VERSION = 1
MANIFEST = "manifest.json"
STORE_DTYPES = {name: getattr(torch, name) for name in STORE_DTYPE_NAMES}
WHOLE_SHUFFLE_BYTES = 2 * 1024**3
"""A layer up to this size (float32) is shuffled as a whole for SAE training."""
LARGE_STORE_WINDOW = 4
"""Shards shuffled together for a larger layer (memory holds this many shards of it)."""

REDO = ("rerun the command that wrote it to redo it (`rlhf-lens harvest` with the same settings; `rlhf-lens run` "
        "checks its run's stores and redoes a damaged one)")
"""The advice of a damaged or unfinished store: both commands that write stores redo what is missing."""

# safetensors dtype names as they appear in a shard's header
_HEADER_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
INDEX_KEYS = {"token_ids": "I32", "doc": "I64", "pos": "I32"}
_INDEX_DTYPES = {"token_ids": torch.int32, "doc": torch.int64, "pos": torch.int32}
MANIFEST_KEYS = ("format", "version", "model", "tokenizer", "corpus", "split", "layers", "d", "dtype",
                 "n_docs", "n_tokens", "complete", "shards")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def layer_key(layer: int) -> str:
    return f"layer{layer}"


@dataclass
class Shard:
    """One shard's rows for one layer: activations as float32, with their token and place in the corpus."""

    index: int
    acts: torch.Tensor
    """float32 `[n, d]`."""
    token_ids: torch.Tensor
    """int32 `[n]`."""
    doc: torch.Tensor
    """int64 `[n]`: index of the document in the corpus split (after `max_docs`)."""
    pos: torch.Tensor
    """int32 `[n]`: token position inside the document (0-based)."""


class ActivationStore:
    """A harvested store, validated on open (manifest against every shard's header)."""

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise UserError(f"{self.path} holds no activation store ({MANIFEST} missing); run `rlhf-lens harvest` first")
        self.manifest: dict = read_json(self.path / MANIFEST)
        check_manifest(self.manifest, self.path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise UserError(f"the harvest in {self.path} is unfinished ({len(self.manifest['shards'])} shards so far); "
                            f"{REDO}")
        if self.manifest["complete"] and int(self.manifest["n_tokens"]) == 0 and not allow_incomplete:
            raise UserError(f"{self.path} holds no activations (0 tokens from {self.manifest['n_docs']} documents); "
                            "harvest a corpus split with non-empty documents (or more of them) into a new folder")
        for entry in self.manifest["shards"]:
            problem = shard_problem(self.path, self.manifest, entry)
            if problem:
                raise UserError(f"{self.path / entry['file']}: {problem}; {REDO}")
        self.layers: list[int] = [int(x) for x in self.manifest["layers"]]
        self.d: int = int(self.manifest["d"])
        self.n_tokens: int = int(self.manifest["n_tokens"])
        self.n_docs: int = int(self.manifest["n_docs"])
        self.dtype: str = self.manifest["dtype"]
        self._doc_starts = [int(e["doc_start"]) for e in self.manifest["shards"]]
        self._index_cache: tuple[int, dict[str, torch.Tensor]] | None = None

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, layers={self.layers}, d={self.d}, "
                f"tokens={self.n_tokens}, docs={self.n_docs}, shards={len(self.manifest['shards'])})")

    def source(self, layer: int, window_shards: int | None = None) -> LayerSource:
        """One layer as an `ActivationSource` (sources.py: shuffled float32 batches) for SAE training.

        By default the batches are a shuffle of the whole store when one layer of it fits in
        `WHOLE_SHUFFLE_BYTES` as float32 (the store is in corpus order, and a corpus may be sorted by
        label: windows of a few shards would then train on one class at a time); larger stores are
        shuffled `LARGE_STORE_WINDOW` shards at a time."""
        self._check_layer(layer)
        if window_shards is None:
            fits = self.n_tokens * self.d * 4 <= WHOLE_SHUFFLE_BYTES
            window_shards = len(self.manifest["shards"]) if fits else LARGE_STORE_WINDOW
        return LayerSource(self, layer, max(window_shards, 1))

    def iter_shards(self, layer: int) -> Iterator[Shard]:
        """Every shard in order, with this layer's activations as float32."""
        self._check_layer(layer)
        for k in range(len(self.manifest["shards"])):
            yield self.read_shard(k, layer)

    def read_shard(self, k: int, layer: int) -> Shard:
        """Shard `k` with one layer's activations (float32) and its index tensors."""
        self._check_layer(layer)
        tensors = self._read(k, [layer_key(layer), *INDEX_KEYS])
        return Shard(k, tensors[layer_key(layer)].float(), tensors["token_ids"], tensors["doc"], tensors["pos"])

    def document_tokens(self, doc: int) -> torch.Tensor:
        """Token ids (int64) of stored document `doc`, in position order; empty if it had no tokens."""
        if not 0 <= doc < self.n_docs:
            raise UserError(f"document {doc} is not in the store: it holds documents 0..{self.n_docs - 1}")
        k = bisect.bisect_right(self._doc_starts, doc) - 1
        if k < 0 or doc >= int(self.manifest["shards"][k]["doc_end"]):
            raise UserError(f"document {doc} has not been harvested yet; finish the harvest in {self.path}")
        if self._index_cache is None or self._index_cache[0] != k:
            # interp asks for many documents of the same shard in a row: keep that shard's index in memory
            self._index_cache = (k, self._read(k, list(INDEX_KEYS)))
        index = self._index_cache[1]
        rows = (index["doc"] == doc).nonzero().squeeze(1)
        order = torch.argsort(index["pos"][rows])
        return index["token_ids"][rows[order]].long()

    def _read(self, k: int, keys: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        entry = self.manifest["shards"][k]
        path = self.path / entry["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: f.get_tensor(key) for key in keys}
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: unreadable ({first_line(e)}); {REDO}") from None

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise UserError(f"layer {layer} is not in the store {self.path}: it holds layers {self.layers}")


class LayerSource:
    """One layer of a store as an `ActivationSource` (the one protocol SAEs train from, in sources.py).

    An epoch visits the shards in a random order, `window_shards` at a time; the rows of a
    window (plus the few left over from the previous one) are shuffled and cut into batches.
    Every row appears exactly once per epoch; only the last batch may be smaller; the order
    depends only on (seed, epoch); memory holds at most `window_shards` shards of one layer.
    """

    def __init__(self, store: ActivationStore, layer: int, window_shards: int = 4, tail: int = 0):
        if window_shards < 1:
            raise UserError(f"window_shards must be at least 1 (got {window_shards})")
        if not 0 <= tail < max(store.n_tokens, 1):
            raise UserError(f"cannot hold out {tail} of the store's {store.n_tokens} rows")
        self.store = store
        self.layer = layer
        self.window_shards = window_shards
        self.tail = tail
        """Rows at the end of the store (shard order) left out of `batches` (held out by `split`)."""
        self.d: int = store.d
        self.n: int = store.n_tokens - tail
        # rows each shard contributes: all, except the last `tail` rows of the store
        self._keep, left = [], self.n
        for entry in store.manifest["shards"]:
            self._keep.append(min(int(entry["n_tokens"]), left))
            left -= self._keep[-1]

    def split(self, rows: int) -> tuple[LayerSource, torch.Tensor]:
        """(this layer without its last `rows` rows, those rows as float32 [rows, d])."""
        train = LayerSource(self.store, self.layer, self.window_shards, self.tail + rows)
        key = layer_key(self.layer)
        parts = []
        for k, keep in enumerate(train._keep):
            until = self._keep[k]
            if keep < until:
                parts.append(self.store._read(k, [key])[key][keep:until].float())
        return train, torch.cat(parts) if parts else torch.empty(0, self.d)

    def __repr__(self) -> str:
        return f"LayerSource({str(self.store.path)!r}, layer={self.layer}, n={self.n}, d={self.d})"

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1 (got {batch_size})")
        rng = np.random.default_rng([seed, epoch])
        n_shards = len(self.store.manifest["shards"])
        order = rng.permutation(n_shards)
        leftover = torch.empty(0, self.d)
        key = layer_key(self.layer)
        for start in range(0, n_shards, self.window_shards):
            window = [leftover] + [self.store._read(int(k), [key])[key][:self._keep[int(k)]].float()
                                   for k in order[start:start + self.window_shards] if self._keep[int(k)]]
            rows = torch.cat(window)
            del window
            rows = rows[torch.from_numpy(rng.permutation(len(rows)))]
            last_window = start + self.window_shards >= n_shards
            usable = len(rows) if last_window else len(rows) // batch_size * batch_size
            for i in range(0, usable, batch_size):
                yield rows[i:min(i + batch_size, usable)]
            leftover = rows[usable:].clone()


# --- writing ----------------------------------------------------------------------------------


def index_tensors(docs: list[list[int]], doc_start: int = 0) -> dict[str, torch.Tensor]:
    """The index keys of a shard holding consecutive documents `doc_start`, ... with these token ids:
    token_ids, doc and pos, one entry per token, ordered by (doc, pos)."""
    lengths = torch.tensor([len(ids) for ids in docs], dtype=torch.int64)
    n = int(lengths.sum())
    offsets = torch.cumsum(lengths, 0) - lengths
    return {"token_ids": torch.tensor([t for ids in docs for t in ids], dtype=torch.int32),
            "doc": torch.repeat_interleave(torch.arange(doc_start, doc_start + len(docs), dtype=torch.int64), lengths),
            "pos": (torch.arange(n, dtype=torch.int64) - torch.repeat_interleave(offsets, lengths)).int()}


class StoreWriter:
    """Writes an activation store: shards atomically, each listed in the in-memory manifest as it is added;
    the manifest goes to disk on `save` (a checkpoint: a killed writer leaves a valid unfinished store) and
    on `finish` (complete).

    `fields` are the manifest's descriptive keys in the order they are written (model, tokenizer, corpus,
    ..., and always `layers`, `d`, `dtype`, `n_docs`); the writer puts format and version first and
    n_tokens, complete and shards last."""

    def __init__(self, out: str | os.PathLike, fields: dict):
        manifest = {"format": FORMAT, "version": VERSION, **fields}
        manifest.update(format=FORMAT, version=VERSION, n_tokens=0, complete=False, shards=[])
        self.out = Path(out)
        self.manifest: dict = manifest

    @classmethod
    def resume(cls, out: str | os.PathLike, manifest: dict) -> StoreWriter:
        """A writer that goes on with the (checked) manifest of an unfinished or finished store at `out`."""
        writer = cls.__new__(cls)
        writer.out, writer.manifest = Path(out), manifest
        return writer

    def write_shard(self, k: int, acts: dict[int, torch.Tensor], index: dict[str, torch.Tensor], doc_start: int,
                    doc_end: int) -> int:
        """Write shard `k` (documents [doc_start, doc_end)): `acts` maps each layer of the store to its rows
        [n, d], `index` holds token_ids, doc and pos [n]. The manifest is not touched. Returns its size in bytes."""
        dtype = STORE_DTYPES[self.manifest["dtype"]]
        tensors = {layer_key(layer): acts[layer].to(dtype) for layer in self.manifest["layers"]}
        tensors.update({key: index[key].to(torch_dtype) for key, torch_dtype in _INDEX_DTYPES.items()})
        path = self.out / shard_name(k)
        # One metadata key: safetensors writes several in a random order, and shards must be byte-identical on resume.
        info = json.dumps({"format": FORMAT, "shard": k, "doc_start": doc_start, "doc_end": doc_end})
        save_safetensors(path, tensors, metadata={"rlhf_lens": info})
        return path.stat().st_size

    def add_shard(self, acts: dict[int, torch.Tensor], index: dict[str, torch.Tensor], doc_start: int,
                  doc_end: int) -> int:
        """Write the next shard (it starts where the last one ended) and list it in the manifest; returns its tokens."""
        shards = self.manifest["shards"]
        expected = shards[-1]["doc_end"] if shards else 0
        if doc_start != expected:
            raise ValueError(f"shard starts at document {doc_start}, expected {expected}")
        k = len(shards)
        size = self.write_shard(k, acts, index, doc_start, doc_end)
        n = int(len(index["doc"]))
        shards.append({"file": shard_name(k), "doc_start": doc_start, "doc_end": doc_end, "n_tokens": n, "bytes": size})
        self.manifest["n_tokens"] += n
        return n

    def save(self) -> None:
        """Write the manifest as it stands."""
        write_json(self.out / MANIFEST, self.manifest)

    def finish(self) -> ActivationStore:
        """Mark the store complete (writing the manifest unless it already was) and open it, which checks every
        shard against the manifest."""
        if not self.manifest["complete"]:
            self.manifest["complete"] = True
            self.save()
        return ActivationStore(self.out)


# --- validation (shared with harvest) --------------------------------------------------------


def check_manifest(manifest: dict, path: Path) -> None:
    """The manifest is well formed and its shard list is consistent with its totals."""
    where = path / MANIFEST
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{where} is not an rlhf-lens activation manifest; point at a folder written by harvest")
    if manifest.get("version") != VERSION:
        raise UserError(f"{where} has format version {manifest.get('version')}, this rlhf-lens reads {VERSION}; "
                        "harvest again")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}; it was damaged: delete {path} and harvest again")
    if manifest["dtype"] not in STORE_DTYPES:
        raise UserError(f"{where}: unknown dtype {manifest['dtype']!r}; delete {path} and harvest again")
    expected_doc = 0
    total = 0
    for k, entry in enumerate(manifest["shards"]):
        if entry.get("file") != shard_name(k) or entry.get("doc_start") != expected_doc \
                or not entry.get("doc_end", -1) >= expected_doc or entry.get("n_tokens", -1) < 0:
            raise UserError(f"{where}: shard entry {k} is inconsistent (file, document range or token count); "
                            f"delete {path} and harvest again")
        expected_doc = entry["doc_end"]
        total += entry["n_tokens"]
    if total != manifest["n_tokens"] or expected_doc > manifest["n_docs"]:
        raise UserError(f"{where}: totals do not match its shard list ({total} tokens in shards, "
                        f"{manifest['n_tokens']} recorded); delete {path} and harvest again")
    if manifest["complete"] and expected_doc != manifest["n_docs"]:
        raise UserError(f"{where} says complete but its shards cover {expected_doc} of {manifest['n_docs']} "
                        f"documents; delete {path} and harvest again")


def store_problem(path: Path) -> str | None:
    """Why the finished store at `path` would not open, in one phrase without advice, or None: the checks
    `ActivationStore` makes on open (manifest, then every shard's size and header: docs/store.md), which read no
    tensor data, so a run can afford them on every resume."""
    problem = manifest_problem(path)
    if problem:
        return problem
    manifest = read_json(path / MANIFEST)
    if not manifest["complete"]:
        return f"the harvest in {path} is unfinished"
    for entry in manifest["shards"]:
        problem = shard_problem(path, manifest, entry)
        if problem:
            return f"{path / entry['file']}: {problem}"
    return None


def manifest_problem(path: Path) -> str | None:
    """Why the manifest of the store at `path` cannot be used (missing, not JSON, inconsistent), or None; a store
    with such a manifest cannot be resumed, only harvested again."""
    where = path / MANIFEST
    if not where.is_file():
        return f"{where} is missing"
    try:
        check_manifest(read_json(where), path)
    except UserError as e:
        return first_line(e).split(";")[0]
    except (KeyError, TypeError, ValueError, AttributeError):  # values of the wrong type: damaged, not ours to read
        return f"{where} is damaged"
    return None


def shard_problem(path: Path, manifest: dict, entry: dict) -> str | None:
    """Why a listed shard cannot be used (missing, truncated, wrong keys/shapes/dtypes/counts), or None."""
    from safetensors import SafetensorError, safe_open

    file = path / entry["file"]
    if not file.is_file():
        return "missing"
    if "bytes" in entry and file.stat().st_size != entry["bytes"]:
        return f"{file.stat().st_size} bytes but the manifest recorded {entry['bytes']} (truncated or replaced)"
    n, d = int(entry["n_tokens"]), int(manifest["d"])
    expected = {layer_key(int(layer)): (_HEADER_DTYPES[manifest["dtype"]], [n, d]) for layer in manifest["layers"]}
    expected.update({key: (dtype, [n]) for key, dtype in INDEX_KEYS.items()})
    try:
        with safe_open(str(file), framework="pt") as f:
            found = {key: (f.get_slice(key).get_dtype(), list(f.get_slice(key).get_shape())) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        return f"corrupt or truncated ({first_line(e)})"
    if found.keys() != expected.keys():
        return f"holds {sorted(found)} but the manifest expects {sorted(expected)}"
    for key, want in expected.items():
        if found[key] != want:
            return f"{key} is {found[key][0]} {found[key][1]} but the manifest expects {want[0]} {want[1]}"
    return None
