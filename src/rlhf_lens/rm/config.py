"""`RMConfig`: how a Bradley-Terry reward model is trained on preference pairs (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from ..rules import Namer, field_name, number, one_of, require, seed

TRAIN_MODES = ("head", "blocks", "full")


@dataclass
class RMConfig:
    train: str = "head"
    """What is trained: head (the linear score head on the frozen backbone's cached last-token states), blocks
    (the head and the last `blocks` blocks, on states cached before them) or full (every parameter)."""
    blocks: int = 1
    """With train = blocks: how many of the last blocks are trained."""
    epochs: int = 0
    """Passes over the training pairs; 0: until the loss on a validation tenth of the training prompts stops improving
    (at most max_epochs; the held-out test pairs are never seen)."""
    max_epochs: int = 200
    """With epochs = 0: the most passes."""
    lr: float = 1e-3
    """AdamW learning rate (full fine-tuning wants ~1e-5)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 32
    """Pairs per optimizer step."""
    margin: bool = False
    """TRL's margin term: loss -log sigmoid(r_chosen - r_rejected - margin), the margin read from the pairs' margin
    column (pairs sampled here carry the gold's difference)."""
    center_coef: float = 0.0
    """TRL's centring term: + center_coef * mean((r_chosen + r_rejected)^2), keeping rewards near 0 (TRL: 0.01)."""
    test_fraction: float = 0.2
    """Share of the pairs (seeded split, by prompt) held out for the accuracy against the labels and the gold."""
    max_length: int = 128
    """Longest text (prompt + completion, tokens) the RM reads; longer ones are truncated on the left."""
    placebo: bool = False
    """Also train a placebo RM on the same pairs with shuffled labels: the null for what the RM learned."""
    seed: int = 0
    """Seed of the split, the head's init and the data order."""


def check_config(config: RMConfig, key: Namer = field_name) -> None:
    """Every setting in range, or a UserError naming the first that is not."""
    c, k = config, key
    require([
        one_of(c, "train", k, TRAIN_MODES),
        number(c, "blocks", k, at_least=1),
        number(c, "epochs", k, at_least=0, note="0: until converged"),
        number(c, "max_epochs", k, at_least=1),
        number(c, "lr", k, above=0),
        number(c, "weight_decay", k, at_least=0),
        number(c, "batch_size", k, at_least=1),
        number(c, "center_coef", k, at_least=0),
        number(c, "test_fraction", k, above=0, below=1),
        number(c, "max_length", k, at_least=8),
        seed(c, "seed", k),
    ])
