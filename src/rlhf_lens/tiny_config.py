"""The tiny GPT-NeoX's settings, in a module without torch so the CLI can build its options fast.

`rlhf_lens.models` re-exports `TinyModelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
