"""Harvest MLP activations of chosen blocks over a corpus split into an activation store.

Documents are tokenized (truncated to `max_tokens`), grouped into shards of about
`shard_tokens` tokens (whole documents only), and run through the model in batches,
right-padded, under `torch.inference_mode`. Forward hooks on the MLP modules copy the
non-padding rows into the shard; the forward stops right after the last hooked MLP, so
later blocks and the LM head are never computed. Each shard is written atomically and then
recorded in the manifest, so a killed harvest resumes at the next shard, and shard k's
content depends only on the corpus, the config and the model. See docs/store.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..store import (
    FORMAT,
    MANIFEST,
    STORE_DTYPES,
    VERSION,
    ActivationStore,
    StoreWriter,
    check_manifest,
    index_tensors,
    shard_name,
    shard_problem,
)
from .config import HarvestConfig

# Settings that decide what a store holds: a rerun into the same folder must match them all.
IDENTITY_KEYS = ("model", "model_type", "tokenizer", "corpus", "corpus_fingerprint", "split", "text_column",
                 "layers", "d", "dtype", "model_dtype", "max_docs", "max_tokens", "shard_tokens", "n_docs")
MOVABLE_KEYS = ("model", "tokenizer")
"""Paths that move with a run folder (its models/base, rlhf/model): the same weights at a new path, with the
tokenizer saved beside them, are the same model, so a moved run's harvest resumes (and records the new paths)."""
TOKENIZE_CHUNK = 64  # documents per tokenizer call (fast tokenizers batch well)


def harvest(
    model_spec: str, config: HarvestConfig, out: str | os.PathLike, model: nn.Module | None = None, tokenizer=None
) -> ActivationStore:
    """Harvest (or resume, or verify) the store in `out`; returns it opened.

    `model`/`tokenizer` may be passed in memory; `model_spec` still names them in the manifest
    (a local folder is recorded as an absolute path, so interp can reload the tokenizer).
    """
    from ..data import load_corpus
    from ..models import check_layers, load_model, load_tokenizer, mlp_width

    _check_config(config)
    out = Path(out)
    existing = _existing_manifest(out)
    corpus = load_corpus(config.corpus, text_column=config.text_column)
    texts = corpus.texts(config.split, config.max_docs or None)
    settings = {
        "model": local_or_name(model_spec), "tokenizer": _tokenizer_spec(tokenizer, model_spec),
        "corpus": local_or_name(config.corpus), "corpus_fingerprint": texts_fingerprint(texts),
        "split": config.split, "text_column": config.text_column, "layers": sorted(set(config.layers)),
        "dtype": config.dtype, "model_dtype": config.model_dtype, "max_docs": config.max_docs,
        "max_tokens": config.max_tokens, "shard_tokens": config.shard_tokens, "n_docs": len(texts),
    }
    if existing is not None:
        # Cheap checks first, before loading a model; model type, width and weights follow below.
        _check_same(existing, settings, out, skip=("model_type", "d", *MOVABLE_KEYS))
    if model is None:
        model, _ = load_model(model_spec, device=config.device, dtype=config.model_dtype, tokenizer=False)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_spec)
    check_layers(model, settings["layers"])
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and config.max_tokens > max_positions:
        raise UserError(f"--max-tokens {config.max_tokens} exceeds the model's context of {max_positions} tokens; "
                        "lower it")
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of {model_spec} has neither a pad nor an EOS token; give it a pad token")
    settings.update(model_type=model.config.model_type, d=mlp_width(model), model_fingerprint=model_fingerprint(model))
    if existing is not None:
        moved = existing.get("model_fingerprint") == settings["model_fingerprint"] and \
            existing.get("tokenizer") == existing.get("model") and settings["tokenizer"] == settings["model"]
        _check_same(existing, settings, out, skip=MOVABLE_KEYS if moved else ())
        writer = StoreWriter.resume(out, {**existing, **{key: settings[key] for key in MOVABLE_KEYS}})
        if writer.manifest != existing:
            writer.save()  # a moved model: the store names it where it is now
    else:
        writer = StoreWriter(out, {**settings, "vocab_size": len(tokenizer), "pad_token_id": int(tokenizer.pad_token_id)})
        writer.save()
    for stale in out.glob(".shard-*.tmp"):
        stale.unlink()  # left by a killed run (atomic writes never rename a partial file into place)

    harvester = Harvester(model, tokenizer, texts, config, settings["layers"])
    from ..progress import progress_bar

    manifest = writer.manifest
    with progress_bar() as bar:
        damaged = [(k, entry) for k, entry in enumerate(manifest["shards"]) if shard_problem(out, manifest, entry)]
        if damaged:
            redo = bar.add_task(f"harvest: redoing {len(damaged)} damaged shard{'s' if len(damaged) > 1 else ''}",
                                total=sum(entry["doc_end"] - entry["doc_start"] for _, entry in damaged))
        for k, entry in damaged:
            acts, index = harvester.shard(out, k, entry["doc_start"], entry["doc_end"],
                                          expect_tokens=entry["n_tokens"], bar=bar, task=redo)
            writer.write_shard(k, acts, index, entry["doc_start"], entry["doc_end"])
        done = manifest["shards"][-1]["doc_end"] if manifest["shards"] else 0
        task = bar.add_task(f"harvest layers {','.join(map(str, settings['layers']))}", total=len(texts),
                            completed=done)
        while done < len(texts):
            k = len(manifest["shards"])
            doc_end = harvester.shard_end(done)
            acts, index = harvester.shard(out, k, done, doc_end, bar=bar, task=task)
            writer.add_shard(acts, index, done, doc_end)
            done = doc_end
            writer.save()
    return writer.finish()


def model_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """A short hash of names, shapes, dtypes and a strided sample of every parameter.

    It tells a retrained model at the same path from the one a store was harvested with,
    at a cost independent of model size (PPO moves every weight, so a sample suffices).
    """
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu").contiguous()
        h.update(f"{name}|{tuple(param.shape)}|{param.dtype}".encode())
        h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def texts_fingerprint(texts: list[str]) -> str:
    """A short hash of the documents, in order: it tells an edited corpus from the one a store was harvested on."""
    h = hashlib.sha256()
    for text in texts:
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:16]


def local_or_name(spec: str) -> str:
    """A local path as an absolute path (so the store can be read from anywhere), a name as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


class _StopForward(Exception):
    """Raised by the last hook: nothing after the deepest harvested MLP is needed."""


class Harvester:
    def __init__(self, model, tokenizer, texts: list[str], config: HarvestConfig, layers: list[int]):
        self.model, self.tokenizer, self.texts, self.config, self.layers = model, tokenizer, texts, config, layers
        self.store_dtype = STORE_DTYPES[config.dtype]
        self.device = next(model.parameters()).device
        self.d = int(model.config.hidden_size)
        self._token_cache: dict[int, list[int]] = {}

    # -- tokenization and shard boundaries ---------------------------------------------------

    def _tokens(self, start: int) -> Iterator[tuple[int, list[int]]]:
        """(doc, token ids) from document `start` on, tokenized a chunk at a time."""
        for chunk_start in range(start, len(self.texts), TOKENIZE_CHUNK):
            chunk = self.texts[chunk_start:chunk_start + TOKENIZE_CHUNK]
            ids = self.tokenizer(chunk, truncation=True, max_length=self.config.max_tokens)["input_ids"]
            yield from zip(range(chunk_start, chunk_start + len(chunk)), ids)

    def shard_end(self, start: int) -> int:
        """End (exclusive) of the shard starting at document `start`: it closes once it holds
        `shard_tokens` tokens. Depends only on the documents' token counts, so it is the same on resume."""
        total = 0
        self._token_cache = {}
        end = start
        for doc, ids in self._tokens(start):
            self._token_cache[doc] = ids
            total += len(ids)
            end = doc + 1
            if total >= self.config.shard_tokens:
                break
        return end

    def _shard_tokens(self, start: int, end: int) -> list[list[int]]:
        if all(doc in self._token_cache for doc in range(start, end)):
            return [self._token_cache[doc] for doc in range(start, end)]
        ids = []
        for doc, doc_ids in self._tokens(start):
            if doc >= end:
                break
            ids.append(doc_ids)
        return ids

    # -- forward passes -------------------------------------------------------------------------

    def shard(self, out: Path, k: int, start: int, end: int, expect_tokens: int | None = None,
              bar=None, task=None) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
        """Run documents [start, end) (shard k of the store at `out`): (layer -> activations, index tensors)."""
        docs = self._shard_tokens(start, end)
        lengths = torch.tensor([len(ids) for ids in docs], dtype=torch.int64)
        n = int(lengths.sum())
        if expect_tokens is not None and n != expect_tokens:
            raise UserError(f"{out / shard_name(k)}: redoing it gives {n} tokens, the manifest recorded "
                            f"{expect_tokens}; the corpus or tokenizer changed: delete {out} and harvest again")
        offsets = torch.cumsum(lengths, 0) - lengths
        buffers = {layer: torch.empty(n, self.d, dtype=self.store_dtype) for layer in self.layers}
        # Longest documents first: batches of similar length waste little on padding.
        order = sorted((i for i in range(len(docs)) if docs[i]), key=lambda i: -len(docs[i]))
        for b in range(0, len(order), self.config.batch_size):
            batch = order[b:b + self.config.batch_size]
            self._forward(batch, docs, offsets, buffers)
            if bar is not None:
                bar.update(task, advance=len(batch))
        if bar is not None:
            bar.update(task, advance=len(docs) - len(order))  # documents with no tokens
        return buffers, index_tensors(docs, start)

    def _forward(self, batch: list[int], docs: list[list[int]], offsets: torch.Tensor,
                 buffers: dict[int, torch.Tensor]) -> None:
        from ..models import mlp_module

        width = max(len(docs[i]) for i in batch)
        input_ids = torch.full((len(batch), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, i in enumerate(batch):
            input_ids[row, :len(docs[i])] = torch.tensor(docs[i])
            mask[row, :len(docs[i])] = True
        # Where each non-padding token (row-major, as output[mask] lists them) goes in the shard.
        dest = torch.cat([torch.arange(int(offsets[i]), int(offsets[i]) + len(docs[i])) for i in batch])
        mask_dev = mask.to(self.device)
        last = max(self.layers)

        def make_hook(layer: int):
            def hook(module, inputs, output):
                acts = output[0] if isinstance(output, tuple) else output
                buffers[layer].index_copy_(0, dest, acts[mask_dev].to("cpu", self.store_dtype))
                if layer == last:
                    raise _StopForward

            return hook

        handles = [mlp_module(self.model, layer).register_forward_hook(make_hook(layer)) for layer in self.layers]
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids.to(self.device), attention_mask=mask.long().to(self.device),
                           use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()


# --- settings ------------------------------------------------------------------------------


def _check_config(config: HarvestConfig) -> None:
    from ..models import torch_dtype

    torch_dtype(config.model_dtype)  # a clear error for an unknown model dtype
    config.check()


def _tokenizer_spec(tokenizer, model_spec: str) -> str:
    """What `models.load_tokenizer` needs to reload the tokenizer (interp decodes tokens with it)."""
    name = getattr(tokenizer, "name_or_path", "") if tokenizer is not None else ""
    if not name:
        return local_or_name(model_spec)
    folder = Path(name).expanduser()
    if folder.is_dir():
        # A folder without tokenizer files (e.g. the GGUF package of smollm2) is reloaded through the model spec.
        has_files = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        return str(folder.resolve()) if has_files else local_or_name(model_spec)
    return name  # a hub id


def _existing_manifest(out: Path) -> dict | None:
    from ..io import read_json

    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the activation store")
    if (out / MANIFEST).is_file():
        manifest = read_json(out / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{out / MANIFEST} is not an rlhf-lens activation manifest; use another --out")
        if manifest.get("version") != VERSION:
            raise UserError(f"{out} holds a store of format version {manifest.get('version')}; use another --out "
                            "or delete it")
        check_manifest(manifest, out)
        return manifest
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no activation store; give a new or empty folder as --out")
    return None


def _check_same(existing: dict, settings: dict, out: Path, skip: tuple[str, ...]) -> None:
    for key in (*IDENTITY_KEYS, "model_fingerprint"):
        if key in skip or key not in settings:
            continue
        if existing.get(key) != settings[key]:
            what = "the model's weights differ" if key == "model_fingerprint" else \
                f"{key} is {existing.get(key)!r} there, {settings[key]!r} now"
            raise UserError(f"{out} holds a harvest with other settings ({what}); use another --out or delete {out}")
