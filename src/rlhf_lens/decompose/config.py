"""`DecomposeConfig`: settings of the decompositions of what tuning changed, one small dataclass per method
(the run's `[decompose.diffsae]`, `[decompose.steer]`, `[decompose.shift]`, `[decompose.crosscoding]`) beside the
shared ones (no torch here: the CLI reads it for `--help`). The methods live in `decompose.diffsae`,
`decompose.shift`, `decompose.crosscoder`, `decompose.run`, and the placebo table in `rewards.placebo` (docs/diff.md, sections "diff-SAE",
"Shared-dictionary shift", "Crosscoder with Latent Scaling", "Placebo tune")."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..rules import Namer, field_name, nested, number, one_of, require, seed, seeds
from ..sae.config import ARCHS

STEER_NORMS = ("contribution", "delta")
SITES = ("mlp", "residual")
CROSSCODER_ARCHS = ("batchtopk", "topk", "l1")
SHIFT_RANKS = ("mean", "z")


@dataclass
class DiffSAESettings:
    """diff-SAEs: SAEs trained on Δ = h_tuned - h_base at the same tokens."""

    arch: str | None = None
    """Architecture of the diff-SAEs (None: batchtopk when rlhf_lens.sae offers it, else topk)."""
    expansion: float = 2.0
    """Dictionary size of a diff-SAE as a multiple of the width d (the change is low-dimensional: 1-2x suffices)."""
    k: int = 16
    """Active latents per token (mean per token for batchtopk) of a diff-SAE; capped at the dictionary size."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds of the diff-SAEs: the first is reported, the others give the seed agreement of its top latents."""
    epochs: int = 0
    """0: train until the held-out loss stops improving, as every SAE of the project (sae.window, sae.tolerance at their defaults), capped by max_tokens; N: exactly N passes over the Δ rows."""
    max_tokens: int = 2_000_000
    """Training tokens at most per diff-SAE when epochs is 0 (the cap of training until converged)."""
    lr: float = 1e-3
    """Adam learning rate of the diff-SAEs."""
    batch_size: int = 256
    """Tokens per optimiser step of the diff-SAEs."""
    top: int = 10
    """Latents listed per diff-SAE, by their share of the summed squared norm of Δ."""


@dataclass
class SteerSettings:
    """Steering the base model by a diff-SAE latent (the causal reading of the diff-SAE)."""

    latents: int = 3
    """Top latents of the first seed steered into the base model (0: none)."""
    norm: str = "contribution"
    """Norm of a steering vector before α: contribution (the latent's mean contribution norm on the tokens where it fires) or delta (|mean Δ|, as the diff's Δ_L steering)."""
    alpha: float = 1.0
    """Multiplier α of that norm."""
    random: int = 19
    """Random directions per steered latent, each matched on the KL the latent's vector causes (the null), seeded; the rank p-value's floor is 1/(random + 1), before Holm across the block's steered latents."""


@dataclass
class ShiftSettings:
    """Shared-dictionary shift: a base SAE encodes base and tuned on the same tokens."""

    rank_by: str = "mean"
    """Rank latents by |change of mean activation| (mean) or by the |z| of the document-level sign-flip test (z); a latent is shifted when its Benjamini-Hochberg q <= decompose.level either way."""
    top: int = 20
    """Latents listed by the shift ranking."""


@dataclass
class CrosscodingSettings:
    """How the crosscoder is trained and read with Latent Scaling (trained in a run when `crosscoder` is on)."""

    arch: str = "batchtopk"
    """batchtopk (k codes per token on average over a batch; a threshold at inference), topk (k per token) or l1 (ReLU + decoder-norm-weighted L1, the sparsity-artifact baseline)."""
    expansion: float = 2.0
    """Dictionary size as a multiple of the width d of one model."""
    k: int = 16
    """Active codes per token (batchtopk: on average over a batch); capped at the dictionary size."""
    l1: float = 1.0
    """For arch l1: weight of sum_j f_j (|d_j^base| + |d_j^tuned|) against the summed squared error of both models."""
    steps: int = 3000
    """Adam steps."""
    lr: float = 3e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Token pairs per step."""
    rows: int = 65536
    """Token pairs sampled (seeded) from the paired stores and held in memory: a random fifth held out for Latent Scaling and the FVU, the rest for training."""
    scaling_threshold: float = 0.3
    """Latent Scaling: a latent is tuned-only when base's least-squares scale is below this fraction of tuned's for both the error and the reconstruction target (base-only: the reverse); otherwise shared."""
    norm_threshold: float = 0.9
    """Decoder-norm reading shown beside it: tuned-only when |d^tuned| / (|d^base| + |d^tuned|) exceeds this, base-only below 1 minus it."""


@dataclass
class DecomposeConfig:
    crosscoder: bool = False
    """Also train a crosscoder with Latent Scaling in a run, as [decompose.crosscoding] says (they need many tokens:
    on in the paper presets, off in demo and tiny)."""
    explain_top: int = 5
    """In a run: the top diff-SAE latents and the top shifted base-SAE latents explained and scored per block."""
    level: float = 0.05
    """False-positive rate of each verdict: latent steering (Holm across latents and blocks), shifted latents (Benjamini-Hochberg false-discovery rate across latents)."""
    site: str = "mlp"
    """What is decomposed: mlp (the MLP outputs the harvest stores hold) or residual (the residual-stream difference at the block output, from the stores the diff stage saves: needs diff.save_activations in a run; the shift then needs a base SAE of that site and is left out of a run)."""
    seed: int = 0
    """Seed of random directions, row samples, crosscoder initialisation; the diff-SAEs' data orders come from their own seeds."""
    diffsae: DiffSAESettings = field(default_factory=DiffSAESettings)
    """The diff-SAEs."""
    steer: SteerSettings = field(default_factory=SteerSettings)
    """Steering by the top diff-SAE latents."""
    shift: ShiftSettings = field(default_factory=ShiftSettings)
    """The shared-dictionary shift."""
    crosscoding: CrosscodingSettings = field(default_factory=CrosscodingSettings)
    """The crosscoder with Latent Scaling."""


_SHIFT_TEST = ("a per-latent document-level sign-flip test with Benjamini-Hochberg at decompose.level replaced the "
               "document-halving null and its pooled quantile")
REMOVED_KEYS = {f"decompose.{prefix}{name}": _SHIFT_TEST for prefix in ("shift_", "shift.") for name in ("splits", "quantile")}
"""Keys of older configs that no longer exist -> what replaced them: read with a one-line note, then ignored."""


def without_removed_keys(data: dict) -> dict:
    """`data` (a run config as nested dicts, old keys already moved) without the `REMOVED_KEYS`, each one found
    noted on stderr in one line naming what replaced it."""
    for old, replaced_by in REMOVED_KEYS.items():
        *path, name = old.split(".")
        values = data
        for part in path:
            values = values.get(part) if isinstance(values, dict) else None
        if isinstance(values, dict) and name in values:
            values.pop(name)
            print(f"note: {old} is no longer read: {replaced_by}; ignored", file=sys.stderr)
    return data


def check_decompose_config(config: DecomposeConfig, key: Namer = field_name,
                           diff_saves_activations: bool | None = None) -> None:
    """Every setting in range, or a UserError naming the first that is not (as `key` spells it). In a run,
    `diff_saves_activations` (diff.save_activations) must be true for site residual."""
    c, k = config, key
    d, dk = c.diffsae, nested(key, "diffsae")
    st, stk = c.steer, nested(key, "steer")
    sh, shk = c.shift, nested(key, "shift")
    cc, cck = c.crosscoding, nested(key, "crosscoding")
    require([
        number(c, "explain_top", k, at_least=0),
        number(c, "level", k, above=0, below=1),
        one_of(c, "site", k, SITES),
        seed(c, "seed", k),
        (d.arch is None or d.arch in ARCHS,
         f"{dk('arch')} must be one of {', '.join(ARCHS)}, or unset for the default (got {d.arch!r})"),
        number(d, "expansion", dk, above=0),
        number(d, "k", dk, at_least=1),
        seeds(d, "seeds", dk),
        number(d, "epochs", dk, at_least=0, note="0: until converged"),
        number(d, "max_tokens", dk, at_least=1),
        number(d, "lr", dk, above=0),
        number(d, "batch_size", dk, at_least=1),
        number(d, "top", dk, at_least=1),
        number(st, "latents", stk, at_least=0, note="0: none"),
        one_of(st, "norm", stk, STEER_NORMS),
        number(st, "alpha", stk, above=0),
        number(st, "random", stk, at_least=1),
        one_of(sh, "rank_by", shk, SHIFT_RANKS),
        number(sh, "top", shk, at_least=1),
        one_of(cc, "arch", cck, CROSSCODER_ARCHS),
        number(cc, "expansion", cck, above=0),
        number(cc, "k", cck, at_least=1),
        number(cc, "l1", cck, at_least=0),
        number(cc, "steps", cck, at_least=1),
        number(cc, "lr", cck, above=0),
        number(cc, "batch_size", cck, at_least=1),
        number(cc, "rows", cck, at_least=2),
        number(cc, "scaling_threshold", cck, above=0, below=1),
        number(cc, "norm_threshold", cck, above=0.5, below=1),
    ])
    require([(c.site != "residual" or diff_saves_activations is not False,
              f"{k('site')} = residual decomposes the residual stores the diff stage saves: set "
              "diff.save_activations = true (or site = mlp)")])
