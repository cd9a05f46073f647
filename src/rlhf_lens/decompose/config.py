"""`DecomposeConfig`: settings of the decompositions of what tuning changed (no torch here: the CLI reads it
for `--help`). The methods live in `decompose.diffsae`, `decompose.shift`, `decompose.crosscoder` and `diff.placebo`
(docs/diff.md, sections "diff-SAE", "Shared-dictionary shift", "Crosscoder with Latent Scaling", "Placebo tune")."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


@dataclass
class DecomposeConfig:
    crosscoder: bool = False
    """Also train a crosscoder with Latent Scaling in a run (they need many tokens: on in the paper presets, off
    in demo and tiny)."""
    explain_top: int = 5
    """In a run: the top diff-SAE latents and the top shifted base-SAE latents explained and scored per block."""
    # --- diff-SAE (SAEs trained on Δ = h_tuned - h_base at the same tokens) ---
    diffsae_arch: str | None = None
    """Architecture of the diff-SAEs (None: batchtopk when rlhf_lens.sae offers it, else topk)."""
    diffsae_expansion: float = 2.0
    """Dictionary size of a diff-SAE as a multiple of the width d (the change is low-dimensional: 1-2x suffices)."""
    diffsae_k: int = 16
    """Active latents per token (mean per token for batchtopk) of a diff-SAE; capped at the dictionary size."""
    diffsae_seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds of the diff-SAEs: the first is reported, the others give the seed agreement of its top latents."""
    diffsae_epochs: int = 5
    """Passes over the Δ rows per diff-SAE."""
    diffsae_lr: float = 1e-3
    """Adam learning rate of the diff-SAEs."""
    diffsae_batch_size: int = 256
    """Tokens per optimiser step of the diff-SAEs."""
    diffsae_top: int = 10
    """Latents listed per diff-SAE, by their share of the summed squared norm of Δ."""
    # --- steering by a diff-SAE latent ---
    steer_latents: int = 3
    """Top latents of the first seed steered into the base model (0: none)."""
    steer_norm: str = "contribution"
    """Norm of a steering vector before α: contribution (the latent's mean contribution norm on the tokens where it fires) or delta (|mean Δ|, as the diff's Δ_L steering)."""
    steer_alpha: float = 1.0
    """Multiplier α of that norm."""
    steer_random: int = 4
    """Random directions of the same norm per steered latent (the null), seeded."""
    # --- shared-dictionary shift (a base SAE encodes base and tuned on the same tokens) ---
    shift_splits: int = 16
    """Seeded random halvings of the base documents; each gives per latent |mean(half A) - mean(half B)| (the null)."""
    shift_quantile: float = 0.99
    """A latent counts as shifted when its |change of mean activation| exceeds this quantile of the null over latents and splits."""
    shift_rank_by: str = "mean"
    """Rank latents by |change of mean activation| (mean) or by its z against the latent's own null (z)."""
    shift_top: int = 20
    """Latents listed by the shift ranking."""
    # --- crosscoder with Latent Scaling ---
    crosscoder_arch: str = "batchtopk"
    """batchtopk (k codes per token on average over a batch; a threshold at inference), topk (k per token) or l1 (ReLU + decoder-norm-weighted L1, the sparsity-artifact baseline)."""
    crosscoder_expansion: float = 2.0
    """Dictionary size as a multiple of the width d of one model."""
    crosscoder_k: int = 16
    """Active codes per token (batchtopk: on average over a batch); capped at the dictionary size."""
    crosscoder_l1: float = 1.0
    """For arch l1: weight of sum_j f_j (|d_j^base| + |d_j^tuned|) against the summed squared error of both models."""
    crosscoder_steps: int = 3000
    """Adam steps."""
    crosscoder_lr: float = 3e-3
    """Adam learning rate."""
    crosscoder_batch_size: int = 256
    """Token pairs per step."""
    crosscoder_rows: int = 65536
    """Token pairs sampled (seeded) from the paired stores and held in memory for training and Latent Scaling."""
    scaling_threshold: float = 0.3
    """Latent Scaling: a latent is tuned-only when base's least-squares scale is below this fraction of tuned's for both the error and the reconstruction target (base-only: the reverse); otherwise shared."""
    norm_threshold: float = 0.9
    """Decoder-norm reading shown beside it: tuned-only when |d^tuned| / (|d^base| + |d^tuned|) exceeds this, base-only below 1 minus it."""
    seed: int = 0
    """Seed of data order, null splits, random directions, row samples and crosscoder initialisation."""


STEER_NORMS = ("contribution", "delta")
CROSSCODER_ARCHS = ("batchtopk", "topk", "l1")


def check_decompose_config(config: DecomposeConfig) -> None:
    """Every setting in range, or a UserError naming the first that is not."""
    c = config
    rules = [
        (c.diffsae_expansion > 0 and c.diffsae_k >= 1, "diffsae_expansion must be > 0 and diffsae_k >= 1"),
        (bool(c.diffsae_seeds) and len(set(c.diffsae_seeds)) == len(c.diffsae_seeds),
         f"diffsae_seeds must be distinct and at least one (got {c.diffsae_seeds})"),
        (c.diffsae_epochs >= 1 and c.diffsae_lr > 0 and c.diffsae_batch_size >= 1,
         "diffsae_epochs and diffsae_batch_size must be >= 1 and diffsae_lr > 0"),
        (c.diffsae_top >= 1 and c.steer_latents >= 0, "diffsae_top must be >= 1 and steer_latents >= 0"),
        (c.explain_top >= 0, f"explain_top must be >= 0 (got {c.explain_top})"),
        (c.steer_norm in STEER_NORMS, f"steer_norm must be one of {', '.join(STEER_NORMS)} (got {c.steer_norm!r})"),
        (c.steer_alpha > 0 and c.steer_random >= 1, "steer_alpha must be > 0 and steer_random >= 1"),
        (c.shift_splits >= 2 and 0 < c.shift_quantile < 1, "shift_splits must be >= 2 and shift_quantile in (0, 1)"),
        (c.shift_rank_by in ("mean", "z"), f"shift_rank_by must be mean or z (got {c.shift_rank_by!r})"),
        (c.shift_top >= 1, "shift_top must be >= 1"),
        (c.crosscoder_arch in CROSSCODER_ARCHS,
         f"crosscoder_arch must be one of {', '.join(CROSSCODER_ARCHS)} (got {c.crosscoder_arch!r})"),
        (c.crosscoder_expansion > 0 and c.crosscoder_k >= 1 and c.crosscoder_l1 >= 0,
         "crosscoder_expansion must be > 0, crosscoder_k >= 1 and crosscoder_l1 >= 0"),
        (c.crosscoder_steps >= 1 and c.crosscoder_lr > 0 and c.crosscoder_batch_size >= 1 and c.crosscoder_rows >= 2,
         "crosscoder_steps, crosscoder_batch_size must be >= 1, crosscoder_lr > 0 and crosscoder_rows >= 2"),
        (0 < c.scaling_threshold < 1 and 0.5 < c.norm_threshold < 1,
         "scaling_threshold must be in (0, 1) and norm_threshold in (0.5, 1)"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)
