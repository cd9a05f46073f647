"""SAE configuration: `SAEConfig`, the architectures, file names and the thresholds training and its flags use."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import UserError

ARCHS = ("tied", "untied", "topk")
CFG_FILE, WEIGHTS_FILE, METRICS_FILE, CHECKPOINT_FILE = "cfg.json", "sae_weights.safetensors", "metrics.json", "checkpoint.pt"
DENSE_L0_FRACTION = 0.25
"""A trained SAE whose mean L0 exceeds this fraction of d_in is flagged `dense_codes` (it is not sparse coding)."""
MOSTLY_DEAD_FRACTION = 0.5
"""A trained SAE with more than this fraction of features that never fired in its last epoch is flagged `mostly_dead`."""
SPARSE_MAX_DENSITY = 0.15
"""Codes at most this dense (fraction of nonzeros in the previous step) take the sparse path (see bench/bench_sae.py)."""
SPARSE_MIN_WORK = 2**25
"""...and only when a dense GEMM of the step (batch * m * d multiply-adds) is at least this big: below it the
sparse path's fixed cost of extra small ops outweighs what it saves."""
SINGLE_THREAD_WORK = 2**23
"""Training whose largest step GEMM (batch * m * d) is below this runs on one thread: ops this small gain
nothing from a second thread and pay an OpenMP barrier per op (badly so on a busy machine)."""
EVAL_TOKENS = 65536
"""Rows of the epoch-0 order on which the final MSE / FVU / L0 in metrics.json are measured."""



@dataclass
class SAEConfig:
    """One sparse autoencoder and how to train it (defaults: the paper's)."""

    d_in: int
    """Activation width d (taken from the activations)."""
    dict_size: int
    """Dictionary size m (number of features); the paper uses m = d and m = 2d."""
    arch: str = "tied"
    """tied (paper: decoder = encoder, unit-norm rows, ReLU), untied (free encoder, unit-norm decoder rows), or topk (untied, keep the k largest codes)."""
    k: int | None = None
    """Active codes per token for --arch topk."""
    l1: float = 1e-3
    """L1 coefficient on the codes (MSE is averaged over elements, so the effective weight scales with d; see docs/sae.md). Ignored by topk."""
    target_l0: float | None = None
    """If set, search the l1 that gives this mean L0 on a sample first (the l1 above is the starting point)."""
    lr: float = 1e-3
    """Adam learning rate."""
    epochs: int = 3
    """Passes over the activations."""
    batch_size: int = 256
    """Tokens per optimiser step (the paper does not give one)."""
    seed: int = 0
    """Seed of the initial dictionary."""
    data_seed: int = 0
    """Seed of the shuffling order (shared by SAEs trained in one pass over the data)."""

    def check(self) -> None:
        """Raise UserError on a value out of range."""
        if self.dict_size < 1:
            raise UserError(f"--dict-size must be >= 1 (got {self.dict_size})")
        if self.d_in < 1:
            raise UserError(f"activation width must be >= 1 (got {self.d_in})")
        if self.arch not in ARCHS:
            raise UserError(f"--arch must be one of {', '.join(ARCHS)} (got {self.arch!r})")
        if self.arch == "topk":
            if self.k is None or not 1 <= self.k <= self.dict_size:
                raise UserError(f"--arch topk needs --k between 1 and the dictionary size {self.dict_size} (got {self.k})")
            if self.target_l0 is not None:
                raise UserError("--target-l0 does not apply to --arch topk: its L0 is --k")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise UserError(f"--l1 must be a finite number >= 0 (got {self.l1})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be > 0 (got {self.lr})")
        if self.epochs < 1:
            raise UserError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.target_l0 is not None and not 0 < self.target_l0 <= self.dict_size:
            raise UserError(f"--target-l0 must be in (0, dict size {self.dict_size}] (got {self.target_l0})")
        if self.target_l0 is not None and self.l1 <= 0:
            raise UserError("--target-l0 needs a starting --l1 > 0")

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


