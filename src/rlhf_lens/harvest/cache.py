"""The harvest of one block that `rlhf-lens explain` keeps in the user cache, so a second explain of the same
model, block and corpus reads it back instead of running the model again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

from ..io import cache_dir
from ..store import ActivationStore
from .config import HarvestConfig
from .run import harvest, model_fingerprint


def cached_harvest(model_spec: str, model: nn.Module, tokenizer, layer: int, corpus: str, split: str,
                   max_docs: int | None, max_tokens: int, device: str = "cpu") -> ActivationStore:
    """Block `layer` of the loaded `model` (named `model_spec`) harvested over `corpus`/`split` into
    `cache_dir()/interp-acts/<key>`, resumed or reopened there. The key: the model's fingerprint, the layer,
    the corpus (a file by its place, size and modification time, so an edited file is harvested afresh),
    the split, `max_docs` and `max_tokens`."""
    config = HarvestConfig(layers=[layer], corpus=corpus, split=split, max_docs=max_docs or 0, max_tokens=max_tokens,
                           device=device)
    source = Path(corpus)
    corpus_key = [str(source.resolve()), source.stat().st_size, source.stat().st_mtime_ns] if source.is_file() \
        else corpus
    key = json.dumps([model_fingerprint(model), layer, corpus_key, split, max_docs, max_tokens])
    out = cache_dir() / "interp-acts" / hashlib.sha256(key.encode()).hexdigest()[:16]
    return harvest(model_spec, config, out, model=model, tokenizer=tokenizer)
