"""Model settings that the run config and the CLI read without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from .rules import Namer, field_name, number, require, seed


@dataclass
class TinyModelConfig:
    layers: int = 4
    """Number of transformer blocks."""
    width: int = 64
    """Hidden size (d_model)."""
    heads: int = 4
    """Attention heads."""
    vocab_size: int = 1024
    """BPE vocabulary size trained on the corpus."""
    context: int = 256
    """Maximum sequence length."""
    pretrain_steps: int = 0
    """Language-model steps on the corpus's train split, so the base model is not random."""
    seed: int = 0
    """Seed for the weights and pretraining."""

    def check(self, key: Namer = field_name) -> None:
        require([
            number(self, "layers", key, at_least=1),
            number(self, "width", key, at_least=1),
            number(self, "heads", key, at_least=1),
            number(self, "vocab_size", key, at_least=1),
            number(self, "context", key, at_least=2),
            number(self, "pretrain_steps", key, at_least=0),
            seed(self, "seed", key),
        ])
        require([(self.width % self.heads == 0,
                  f"{key('width')} ({self.width}) must be a multiple of {key('heads')} ({self.heads})")])
