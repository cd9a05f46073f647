"""Paired activation stores (base and tuned harvested on the same tokens) and the Δ store.

A pipeline harvests the base and the tuned model over the same documents with the same tokenizer and
settings, so both stores hold the same rows in the same order (docs/store.md). Everything here checks
that first (token_ids, doc and pos equal, shard by shard) and says so in one line when it is not so.

`delta_store` writes Δ = h_tuned - h_base as a new store in the same format, so SAE training
(`store.source(layer)`) and the interpretation stage (`explain_features`) run on it unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import UserError
from ..store import INDEX_KEYS, MANIFEST, ActivationStore, Shard, StoreWriter

DELTA_SITE_KEY = "delta"
"""Manifest key of a Δ store: {"base", "tuned", "base_model", "tuned_model", "layer", "site"}."""


def open_store(store: ActivationStore | str | os.PathLike) -> ActivationStore:
    return store if isinstance(store, ActivationStore) else ActivationStore(store)


def check_paired(base: ActivationStore, tuned: ActivationStore, layer: int) -> None:
    """Both stores hold `layer` with the same width and the same rows (token_ids, doc, pos), shard by shard.

    Reads only the index tensors. UserError (one line) naming the first difference."""
    for store in (base, tuned):
        store._check_layer(layer)
    if base.d != tuned.d:
        raise UserError(f"base and tuned stores have different widths (d = {base.d} vs {tuned.d}); "
                        "harvest both models' same block")
    shards_b, shards_t = base.manifest["shards"], tuned.manifest["shards"]
    if base.n_tokens != tuned.n_tokens or len(shards_b) != len(shards_t):
        raise UserError(f"base store {base.path} and tuned store {tuned.path} hold different rows "
                        f"({base.n_tokens} vs {tuned.n_tokens} tokens, {len(shards_b)} vs {len(shards_t)} shards); "
                        "harvest both models with the same corpus, split, max docs/tokens and shard size")
    for k, (eb, et) in enumerate(zip(shards_b, shards_t)):
        if (eb["doc_start"], eb["doc_end"], eb["n_tokens"]) != (et["doc_start"], et["doc_end"], et["n_tokens"]):
            raise UserError(f"base and tuned stores differ at shard {k} (documents {eb['doc_start']}..{eb['doc_end']} "
                            f"vs {et['doc_start']}..{et['doc_end']}); harvest both with the same settings")
        ib, it = base._read(k, list(INDEX_KEYS)), tuned._read(k, list(INDEX_KEYS))
        _check_index(ib, it, k)


def _check_index(ib: dict[str, torch.Tensor], it: dict[str, torch.Tensor], k: int) -> None:
    for key in INDEX_KEYS:
        if not torch.equal(ib[key], it[key]):
            row = int((ib[key] != it[key]).nonzero()[0, 0])
            raise UserError(f"base and tuned stores hold different tokens (shard {k}, row {row}: {key} "
                            f"{int(ib[key][row])} vs {int(it[key][row])}); they must be harvested on the same tokens "
                            "with the same tokenizer")


def iter_paired(base: ActivationStore, tuned: ActivationStore, layer: int) -> Iterator[tuple[Shard, Shard]]:
    """(base shard, tuned shard) of `layer` in order, each pair checked to hold the same rows."""
    check_paired(base, tuned, layer)
    for k in range(len(base.manifest["shards"])):
        sb, st = base.read_shard(k, layer), tuned.read_shard(k, layer)
        _check_index({"token_ids": sb.token_ids, "doc": sb.doc, "pos": sb.pos},
                     {"token_ids": st.token_ids, "doc": st.doc, "pos": st.pos}, k)
        yield sb, st


def sample_paired_rows(base: ActivationStore, tuned: ActivationStore, layer: int, max_rows: int,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded uniform sample of at most `max_rows` paired rows: (h_base [n, d], h_tuned [n, d], doc [n]),
    in store order. Memory: the sample plus one shard."""
    total = base.n_tokens
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(total, generator=gen)[:max_rows].sort().values if total > max_rows else torch.arange(total)
    out_b, out_t, out_doc = [], [], []
    offset = 0
    for sb, st in iter_paired(base, tuned, layer):
        n = len(sb.doc)
        lo, hi = torch.searchsorted(keep, offset), torch.searchsorted(keep, offset + n)
        rows = keep[lo:hi] - offset
        out_b.append(sb.acts[rows])
        out_t.append(st.acts[rows])
        out_doc.append(sb.doc[rows])
        offset += n
    if not out_b:
        raise UserError(f"the stores {base.path} and {tuned.path} hold no rows")
    return torch.cat(out_b), torch.cat(out_t), torch.cat(out_doc)


def delta_store(base_store: ActivationStore | str | os.PathLike, tuned_store: ActivationStore | str | os.PathLike,
                layer: int, out: str | os.PathLike) -> ActivationStore:
    """Write Δ = h_tuned - h_base of `layer` (same rows, float32) as a new store at `out`; return it.

    The manifest copies the base store's fields (tokenizer, corpus, split, ...) so the interpretation stage
    reads documents back as for the base store, holds the one layer `layer`, and records the provenance
    under "delta": {"base", "tuned" (store folders), "base_model", "tuned_model", "layer", "site"}.
    `out` must be new or empty; a finished Δ store of the same two stores and layer there is reopened, not
    rewritten."""
    base, tuned = open_store(base_store), open_store(tuned_store)
    out = Path(out)
    provenance = {"base": str(base.path.resolve()), "tuned": str(tuned.path.resolve()),
                  "base_model": base.manifest.get("model"), "tuned_model": tuned.manifest.get("model"),
                  "layer": int(layer), "site": base.manifest.get("site", "mlp")}
    if (out / MANIFEST).is_file():
        existing = ActivationStore(out, allow_incomplete=True)
        if existing.manifest.get(DELTA_SITE_KEY) == provenance and existing.manifest["complete"]:
            return existing
        raise UserError(f"{out} already holds another activation store; give a new folder for the Δ store")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; give a new folder for the Δ store")
    fields = {k: v for k, v in base.manifest.items()
              if k not in ("shards", "layers", "n_tokens", "complete", "dtype", "d", "n_docs", "model_fingerprint")}
    fields["model"] = f"{provenance['tuned_model']} - {provenance['base_model']}"
    fields[DELTA_SITE_KEY] = provenance
    writer = StoreWriter(out, {**fields, "layers": [layer], "d": base.d, "dtype": "float32", "n_docs": base.n_docs})
    for (sb, st), entry in zip(iter_paired(base, tuned, layer), base.manifest["shards"]):
        writer.add_shard({layer: st.acts - sb.acts}, {"token_ids": sb.token_ids, "doc": sb.doc, "pos": sb.pos},
                         int(entry["doc_start"]), int(entry["doc_end"]))
    return writer.finish()
