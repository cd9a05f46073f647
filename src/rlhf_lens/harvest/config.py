"""Harvest settings and their rules (torch-free: the run config and the CLI read them at load)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rules import Namer, flag, number, one_of, require

STORE_DTYPES = ("float32", "bfloat16")
"""Dtypes an activation store holds its activations in (`store.py` maps them to torch dtypes)."""


@dataclass
class HarvestSettings:
    """How activations are collected: the run config's [harvest] section (the run supplies the rest)."""

    max_docs: int = 0
    """Documents of the split to harvest: a seeded random subset of this many (0: all)."""
    max_tokens: int = 256
    """Truncate each document to this many tokens (the paper: 256)."""
    batch_size: int = 16
    """Documents per forward pass."""
    dtype: str = "float32"
    """Storage dtype of the activations: float32 or bfloat16 (half the disk)."""
    shard_tokens: int = 16384
    """Tokens per shard (whole documents, so a shard may hold up to max_tokens-1 more). The unit of resume and of reader memory."""

    def check(self, key: Namer = flag) -> None:
        require([
            number(self, "max_docs", key, at_least=0, note="0: all"),
            number(self, "max_tokens", key, at_least=1),
            number(self, "batch_size", key, at_least=1),
            one_of(self, "dtype", key, STORE_DTYPES),
            number(self, "shard_tokens", key, at_least=1),
        ])


@dataclass
class HarvestConfig(HarvestSettings):
    """One harvest: the settings plus what a run (or the `harvest` command) decides."""

    layers: list[int] = field(default_factory=list)
    """Blocks whose MLP output is harvested, e.g. 3,4,5 (0-based)."""
    corpus: str = ""
    """Corpus name (imdb, pang-lee, ...) or path to a .txt/.jsonl/.csv/.parquet file."""
    split: str = "test"
    """Corpus split to run over (the paper: IMDB test)."""
    device: str = "cpu"
    """Device for the forward passes: cpu or cuda."""
    text_column: str = "text"
    """Column holding the text in a .jsonl/.csv/.parquet corpus."""
    model_dtype: str = "float32"
    """Dtype the model is loaded in (float32, bfloat16, float16)."""

    def check(self, key: Namer = flag) -> None:
        """The settings' rules, then what a harvest needs (the model dtype is checked where the model loads)."""
        require([(bool(self.layers), f"no layers given; name at least one block, e.g. {key('layers')} 3,4,5")])
        super().check(key)
        require([(bool(self.corpus), "no corpus given; name one (pang-lee, imdb) or a file")])
