"""Where SAEs get their activations: the `ActivationSource` protocol (rows [n, d] served as shuffled batches),
`TensorSource` (a tensor or a safetensors file in memory) and `open_source` (a file or one layer of an
activation store, whose `LayerSource` implements the same protocol)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .errors import UserError, first_line


@runtime_checkable
class ActivationSource(Protocol):
    """Rows of activations [n, d] served as shuffled batches (the store's layers implement it too)."""

    d: int
    n: int

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        """Shuffled float32 [b, d] batches covering every row exactly once per epoch, deterministic in
        (seed, epoch); memory bounded by a few shards. The last batch may be smaller."""
        ...

    def split(self, rows: int) -> tuple[ActivationSource, torch.Tensor]:
        """(a source of all rows but the last `rows`, those last rows as float32 [rows, d]): the held-out
        slice SAE training measures its loss curve on. "Last" is the source's own fixed order (a store: the
        last documents harvested), independent of seeds."""
        ...


def _order_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1)


class TensorSource:
    """Activations held in memory: a tensor [n, d], or a safetensors file with key `activations` [n, d]."""

    def __init__(self, data: str | Path | torch.Tensor, key: str = "activations"):
        if isinstance(data, torch.Tensor):
            self.name = "tensor"
            acts = data
        else:
            self.name = str(data)
            acts = _read_tensor_file(Path(data), key)
        if acts.ndim != 2:
            raise UserError(f"{self.name}: {key!r} must be 2-D [n, d], got shape {list(acts.shape)}")
        if not acts.is_floating_point():
            raise UserError(f"{self.name}: {key!r} must be floating point, got {acts.dtype}")
        if acts.shape[0] < 1 or acts.shape[1] < 1:
            raise UserError(f"{self.name}: {key!r} is empty (shape {list(acts.shape)})")
        # a tensor on a GPU stays there (batches are then cut on the GPU); a file is read into CPU memory
        self.acts = acts.detach().to(torch.float32).contiguous()
        check_finite(self.acts, self.name)
        self.n, self.d = self.acts.shape

    def split(self, rows: int) -> tuple[TensorSource, torch.Tensor]:
        if not 0 < rows < self.n:
            raise UserError(f"{self.name}: cannot hold out {rows} of {self.n} rows")
        return TensorSource(self.acts[:self.n - rows]), self.acts[self.n - rows:]

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(_order_seed(seed, epoch))
        perm = torch.randperm(self.n, generator=g).to(self.acts.device)  # drawn on the CPU: same order everywhere
        for start in range(0, self.n, batch_size):
            # sorted rows within a batch: same set, friendlier memory access
            yield self.acts.index_select(0, perm[start:start + batch_size].sort().values)


def check_finite(acts: torch.Tensor, name: str, chunk_rows: int = 65536) -> None:
    """UserError if `acts` holds NaN or inf (checked in row chunks: bounded extra memory)."""
    rows = acts.reshape(-1, acts.shape[-1]) if acts.ndim else acts.reshape(1, 1)
    total, first = 0, None
    for start in range(0, rows.shape[0], chunk_rows):
        bad = ~torch.isfinite(rows[start:start + chunk_rows])
        count = int(bad.sum())
        if count and first is None:
            first = start + int(bad.any(dim=1).nonzero()[0, 0])
        total += count
    if total:
        raise UserError(f"{name}: activations contain {total} NaN/inf values (first in row {first}); "
                        "fix or drop those rows")


def _read_tensor_file(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: no such file; pass a safetensors file with key {key!r} [n, d] or an activation store folder")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if key not in keys:
                raise UserError(f"{path}: no tensor {key!r} (keys: {', '.join(keys) or 'none'}); "
                                f"save the activations [n, d] under the key {key!r}")
            return fh.get_tensor(key)
    except UserError:
        raise
    except Exception as e:  # safetensors raises its own error types for a malformed header
        raise UserError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def open_source(spec: str | Path, layer: int | None = None) -> ActivationSource:
    """A safetensors file (key `activations`) or an activation store folder (with `layer`)."""
    path = Path(spec)
    if path.is_dir():
        from .store import ActivationStore

        store = ActivationStore(path)
        if layer is None:
            if len(store.layers) != 1:
                raise UserError(f"{path}: the store holds layers {store.layers}; choose one with --layer")
            layer = store.layers[0]
        if layer not in store.layers:
            raise UserError(f"{path}: no layer {layer} in the store (layers: {store.layers})")
        return store.source(layer)
    if layer is not None:
        raise UserError("--layer applies to an activation store folder, not to a single file")
    return TensorSource(path)


