"""SAE configuration: `SAEConfig`, the architectures, file names and the thresholds training and its flags use."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..rules import Namer, flag, number, one_of, require, seed

ARCHS = ("tied", "untied", "topk", "batchtopk")
DTYPES = ("float32", "bfloat16")
CFG_FILE, WEIGHTS_FILE, METRICS_FILE, CHECKPOINT_FILE = "cfg.json", "sae_weights.safetensors", "metrics.json", "checkpoint.pt"
DENSE_L0_FRACTION = 0.25
"""A trained SAE whose mean L0 exceeds this fraction of d_in is flagged `dense_codes` (it is not sparse coding)."""
MOSTLY_DEAD_FRACTION = 0.5
"""A trained SAE with more than this fraction of features that never fired in its last epoch is flagged `mostly_dead`."""
SPARSE_MAX_DENSITY = 0.09
"""Codes at most this dense (fraction of nonzeros in the previous step) take the sparse path: where it overtakes
the dense one at d 512, m 1024 and 2048, batch 4096, one or two threads (bench/sae_sparse_crossover.py)."""
SPARSE_MIN_WORK = 2**25
"""...and only when a dense GEMM of the step (batch * m * d multiply-adds) is at least this big: below it the
sparse path's fixed cost of extra small ops outweighs what it saves."""
SINGLE_THREAD_WORK = 2**23
"""Training whose largest step GEMM (batch * m * d) is below this runs on one thread: ops this small gain
nothing from a second thread and pay an OpenMP barrier per op (badly so on a busy machine)."""
EVAL_TOKENS = 65536
"""Rows of the epoch-0 order on which the final MSE / FVU / L0 in metrics.json are measured."""
AUX_COEFFICIENT = 1 / 32
"""Weight of the auxiliary-k loss on dead latents (topk, batchtopk): Gao et al. 2024's 1/32, here on an unnormalised
per-element mean squared error like the main loss (docs/sae.md, "Dead latents")."""
THRESHOLD_RATE = 0.01
"""BatchTopK: rate of the running mean of the smallest kept activation (the inference threshold; bias-corrected)."""
RESAMPLE_ENCODER_SCALE = 0.2
"""Untied: a resampled latent's encoder row is its new direction times this times the mean live encoder norm."""



@dataclass
class SAETraining:
    """How sparse autoencoders are trained (defaults: the paper's, but for the stopping rule). The run config's
    [sae] section is these fields plus the dictionary sizes and seeds of the grid (`config.SAESection`)."""

    arch: str = "tied"
    """tied (paper: decoder = encoder, unit-norm rows, ReLU), untied (free encoder, unit-norm decoder rows), topk (untied, keep the k largest codes of each token) or batchtopk (untied, keep the k * batch largest codes of the batch; a learned threshold at inference)."""
    k: int | None = None
    """Active codes per token for --arch topk and batchtopk (batchtopk: on average)."""
    l1: float = 1e-3
    """L1 coefficient on the codes (MSE is averaged over elements, so the effective weight scales with d; see docs/sae.md). Ignored by topk."""
    target_l0: float | None = None
    """If set, search the l1 that gives this mean L0 on a sample first (the l1 above is the starting point)."""
    lr: float = 1e-3
    """Adam learning rate."""
    epochs: int = 0
    """Passes over the activations, exactly; 0: train until the held-out loss stops improving (see --tolerance, --window, --max-tokens, --max-seconds)."""
    batch_size: int = 256
    """Tokens per optimiser step (the paper does not give one)."""
    holdout: int = 4096
    """Rows held out of training (the tail of the data, at most a tenth of it) on which the loss curve and the stopping rule are measured; 0: none (then --epochs must be set)."""
    eval_every: int = 100
    """Optimiser steps between two held-out evaluations."""
    window: int = 4
    """Stopping rule: stop when the best held-out loss of the last WINDOW evaluations improves on the best before them by less than --tolerance (relative)."""
    tolerance: float = 0.01
    """Relative held-out loss improvement over --window evaluations below which training has converged."""
    max_tokens: int = 50_000_000
    """Training tokens at most when --epochs is 0 (0: no cap)."""
    max_seconds: float = 3600.0
    """Seconds of this SAE's training steps at most when --epochs is 0 (0: no cap). A safety cap: where it stops
    depends on the machine's speed and load, so a run meant to be reproduced caps with --max-tokens."""
    dead_steps: int = 200
    """A latent that has not fired for this many steps is dead: topk/batchtopk train it with the auxiliary-k loss, tied/untied resample it at the next evaluation; 0: neither."""
    b_dec_init: str = "mean"
    """Initial decoder bias: mean (of the first training batch) or zero (the paper)."""
    lr_warmup: int = 0
    """Steps of linear learning-rate warm-up from 0 (0: none)."""
    l1_warmup: int = 0
    """Steps of linear l1 warm-up from 0 (0: none; ignored by topk/batchtopk)."""
    lr_decay: int = 0
    """Steps of linear learning-rate decay to 0 that end training (0: none): with --epochs N the last LR_DECAY steps; until converged, a cool-down of LR_DECAY more steps once the held-out loss has plateaued."""
    device: str = "cpu"
    """Where the SAE trains: cpu, cuda or cuda:N (the activations are moved there batch by batch; the saved SAE is the same files)."""
    dtype: str = "float32"
    """Matrix products of a training step in float32 or bfloat16 (bf16 autocast: weights, Adam state and the loss stay float32)."""

    def check(self, key: Namer = flag) -> None:
        """The training settings' rules (an SAE's shape adds its own, `SAEConfig.check`), each message naming the
        setting as `key` spells it: `--flag` for `train-sae`, `sae.key` for a run's [sae]. Each field's own rule
        first, then the rules relating two fields (naming both)."""
        by_rank = self.arch in ("topk", "batchtopk")
        require([
            one_of(self, "arch", key, ARCHS),
            (not by_rank or (self.k is not None and self.k >= 1),
             f"{key('k')} must be >= 1 with {key('arch')} {self.arch} (got {self.k})"),
            number(self, "l1", key, at_least=0),
            number(self, "target_l0", key, above=0, unset=True),
            number(self, "lr", key, above=0),
            number(self, "epochs", key, at_least=0, note="0: until converged"),
            number(self, "batch_size", key, at_least=1),
            number(self, "holdout", key, at_least=0, note="0: none"),
            number(self, "eval_every", key, at_least=1),
            number(self, "window", key, at_least=1),
            number(self, "tolerance", key, at_least=0),
            number(self, "max_tokens", key, at_least=0, note="0: no cap"),
            number(self, "max_seconds", key, at_least=0, note="0: no cap"),
            number(self, "dead_steps", key, at_least=0, note="0: neither"),
            one_of(self, "b_dec_init", key, ("mean", "zero")),
            number(self, "lr_warmup", key, at_least=0),
            number(self, "l1_warmup", key, at_least=0),
            number(self, "lr_decay", key, at_least=0),
            (re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
             f"{key('device')} must be cpu, cuda or cuda:N (got {self.device!r})"),
            one_of(self, "dtype", key, DTYPES),
        ])
        require([
            (not (by_rank and self.target_l0 is not None),
             f"{key('target_l0')} does not apply to {key('arch')} {self.arch}: its L0 is {key('k')}"),
            (self.epochs != 0 or self.holdout != 0,
             f"training until converged ({key('epochs')} 0) needs held-out rows: set {key('holdout')} > 0 or "
             f"{key('epochs')} N"),
            (self.target_l0 is None or self.l1 > 0, f"{key('target_l0')} needs a starting {key('l1')} > 0"),
        ])


@dataclass
class SAEConfig(SAETraining):
    """One sparse autoencoder: its shape, seeds and how it is trained."""

    d_in: int = 0
    """Activation width d (taken from the activations)."""
    dict_size: int = 0
    """Dictionary size m (number of features); the paper uses m = d and m = 2d."""
    seed: int = 0
    """Seed of the initial dictionary."""
    data_seed: int = 0
    """Seed of the shuffling order (shared by SAEs trained in one pass over the data)."""

    def check(self, key: Namer = flag) -> None:
        """Raise UserError on a value out of range: the shape, then the training settings (`SAETraining.check`)."""
        require([
            number(self, "dict_size", key, at_least=1),
            (self.d_in >= 1, f"activation width must be >= 1 (got {self.d_in})"),
            seed(self, "seed", key),
            seed(self, "data_seed", key),
        ])
        super().check(key)
        require([
            (not self.codes_by_rank or self.k <= self.dict_size,
             f"{key('arch')} {self.arch} needs {key('k')} between 1 and the dictionary size {self.dict_size} "
             f"(got {self.k})"),
            (self.target_l0 is None or self.target_l0 <= self.dict_size,
             f"{key('target_l0')} must be in (0, dict size {self.dict_size}] (got {self.target_l0})"),
        ])

    @property
    def codes_by_rank(self) -> bool:
        """True for topk and batchtopk: sparsity by keeping the largest codes (no L1 term)."""
        return self.arch in ("topk", "batchtopk")

    def identity(self) -> dict:
        """The fields that define the trained SAE (all but `device`: where it trained does not change what it is);
        a finished or checkpointed SAE folder is reused only for the same identity."""
        fields = dataclasses.asdict(self)
        fields.pop("device")
        return fields

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


