"""The documents detection and fuzzing score, sampled during the examples pass (examples.py).

- **activating**: a uniform sample of the documents a feature fires on (max > 0 over the first `max_tokens`
  tokens), none of its top `n_top` (shown to the explainer). One pass, bounded memory, the same bits every time:
  a bottom-m sketch keeps the m = `SKETCH` x `n_activating` firing documents with the smallest seeded hash of
  their index (plus `n_top` spares, since the top documents are known only at the end). The sample is ranked by
  the document's maximum and cut into `n_activating` equal-count bins; one document is drawn (seeded) from each,
  so the scored examples span the activation range (deciles when n_activating = 10). Fewer than `n_activating`
  documents: all of them.
- **silent**: the first `n_silent` documents, in the seeded permutation the random records use, where the
  feature's max is <= 0 (a dense feature may have fewer).

Each kept document is a window of `context_tokens` tokens of its first `max_tokens`: for an activating one ending
`AFTER_PEAK` tokens after its peak token, for a silent one its first tokens; raw per-token activations kept.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from .config import ExampleConfig

SKETCH = 8
"""Sample size per activating bin (m = SKETCH x n_activating documents are drawn before binning)."""
AFTER_PEAK = 4
"""An activating window ends this many tokens after the peak token (the text that follows it is shown too)."""
_MASK = (1 << 64) - 1

Window = tuple[int, int, list[int], list[float]]
"""(document, first position, token ids, raw activations)."""


def doc_hash(docs: np.ndarray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of document indices (splitmix64): the sketch's uniform, reproducible order."""
    offset = np.uint64(((seed + 1) * 0x9E3779B97F4A7C15) & _MASK)
    x = docs.astype(np.uint64) + offset
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Sampler:
    """Running activating sketches and silent lists of every feature, fed one shard at a time."""

    def __init__(self, features: dict[str, list[int]], config: ExampleConfig, permutation: np.ndarray):
        self.config = config
        self.capacity = SKETCH * config.n_activating + config.n_top
        self.rank = np.empty(len(permutation), dtype=np.int64)
        self.rank[permutation] = np.arange(len(permutation))
        # per SAE, per feature: sketch entries (hash, doc, max, window) sorted by hash; silent (rank, window)
        self.sketch: dict[str, list[list[tuple[int, int, float, Window]]]] = {
            name: [[] for _ in feats] for name, feats in features.items()}
        self.silent: dict[str, list[list[tuple[int, Window]]]] = {name: [[] for _ in feats]
                                                                  for name, feats in features.items()}
        self.n_firing: dict[str, list[int]] = {name: [0] * len(feats) for name, feats in features.items()}

    def update(self, name: str, doc_ids: np.ndarray, doc_max: np.ndarray, ids: torch.Tensor, codes: torch.Tensor,
               starts: torch.Tensor, lengths: torch.Tensor) -> None:
        """One shard's documents (`doc_ids`, their maxima `doc_max` [docs, features]) for SAE `name`."""
        hashes = doc_hash(doc_ids, self.config.seed)
        ranks = self.rank[doc_ids]
        for j in range(doc_max.shape[1]):
            fires = doc_max[:, j] > 0
            self.n_firing[name][j] += int(fires.sum())
            kept = self.sketch[name][j]
            candidates = np.nonzero(fires)[0]
            if len(kept) >= self.capacity:
                candidates = candidates[hashes[candidates] < np.uint64(kept[-1][0])]
            if len(candidates):
                # this shard's smallest hashes only: the sketch never holds more than capacity + capacity windows
                candidates = candidates[np.argsort(hashes[candidates], kind="stable")[: self.capacity]]
                for u in candidates.tolist():
                    window = self._activating(int(doc_ids[u]), ids, codes, j, int(starts[u]), int(lengths[u]))
                    kept.append((int(hashes[u]), int(doc_ids[u]), float(doc_max[u, j]), window))
                kept.sort(key=lambda e: (e[0], e[1]))
                del kept[self.capacity:]
            quiet = self.silent[name][j]
            candidates = np.nonzero(~fires)[0]
            if len(quiet) >= self.config.n_silent:
                candidates = candidates[ranks[candidates] < quiet[-1][0]]
            if len(candidates):
                candidates = candidates[np.argsort(ranks[candidates], kind="stable")[: self.config.n_silent]]
                for u in candidates.tolist():
                    s, n = int(starts[u]), min(int(lengths[u]), self.config.context_tokens)
                    quiet.append((int(ranks[u]), (int(doc_ids[u]), 0, ids[s:s + n].tolist(),
                                                  codes[s:s + n, j].tolist())))
                quiet.sort(key=lambda e: e[0])
                del quiet[self.config.n_silent:]

    def _activating(self, doc: int, ids: torch.Tensor, codes: torch.Tensor, j: int, s: int, n: int) -> Window:
        values = codes[s:s + n, j]
        peak = int(torch.argmax(values))  # the first maximal token
        end = min(n, peak + 1 + AFTER_PEAK)
        start = max(0, end - self.config.context_tokens)
        end = min(n, start + self.config.context_tokens)
        return doc, start, ids[s + start:s + end].tolist(), values[start:end].tolist()

    def windows(self, name: str, j: int, feature: int, top_docs: set[int]) -> tuple[list[Window], list[Window]]:
        """The activating windows (one per bin, strongest bin first) and silent windows of feature `j` of `name`."""
        m = SKETCH * self.config.n_activating
        pool = [e for e in self.sketch[name][j] if e[1] not in top_docs][:m]
        pool.sort(key=lambda e: (-e[2], e[1]))
        if len(pool) <= self.config.n_activating:
            chosen = pool
        else:
            rng = np.random.default_rng([self.config.seed, zlib.crc32(name.encode()), feature])
            chosen = [pool[int(b[rng.integers(len(b))])]
                      for b in np.array_split(np.arange(len(pool)), self.config.n_activating)]
        return [e[3] for e in chosen], [w for _, w in self.silent[name][j]]
