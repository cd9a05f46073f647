"""`Architecture`: what an SAE architecture decides, asked by the shared model (`sae/model.py`), the
hand-written training step (`sae/step.py`) and the trainer. One subclass per architecture, one module each."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ..config import SAEConfig


class SAEProtocol(Protocol):
    """What an architecture uses of the SAE (`sae.model.SparseAutoencoder`; named here, not imported, so the
    model can import the registry)."""

    cfg: SAEConfig
    threshold: torch.Tensor

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor: ...

    def unit_dictionary(self) -> torch.Tensor: ...


class StepperProtocol(Protocol):
    """What an architecture uses of the hand-written step (`sae.step.Stepper`)."""

    sae: SAEProtocol
    min_kept: torch.Tensor | None
    threshold_steps: int

    def buf(self, name: str, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor: ...


SparseCodes = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"]
"""A batch's codes for the sparse step, in CSR order: (values, row, column, crow, live); `live` [nnz] marks the
values that are positive (None: all are)."""


class Architecture:
    """One SAE architecture. The shared code reads its flags and calls its methods; it never compares names."""

    name: str = ""
    """The `SAEConfig.arch` it is registered under (`sae.config.ARCHS`)."""
    has_encoder: bool = True
    """False: codes are read with the normalised dictionary itself (tied), no free encoder matrix."""
    codes_by_rank: bool = False
    """Sparsity by keeping the largest codes: no L1 term; dead latents get the auxiliary-k loss."""
    learns_threshold: bool = False
    """Keeps a per-latent inference threshold (the `threshold` buffer [m], saved with the weights)."""
    saelens_architecture: str = "standard"
    """The `architecture` its cfg.json names: what SAELens builds when it loads the folder."""
    reads_saelens: bool = False
    """A foreign SAELens folder of `saelens_architecture` loads as this architecture."""

    # --- codes (the model, with autograd) ---

    def encode(self, sae: SAEProtocol, pre: torch.Tensor) -> torch.Tensor:
        """Codes f [..., m] at inference from the pre-activations x E^T + b_enc."""
        raise NotImplementedError

    def train_codes(self, sae: SAEProtocol, pre: torch.Tensor) -> torch.Tensor:
        """Codes as training computes them on a batch [b, m] (the same as `encode` unless overridden)."""
        return self.encode(sae, pre)

    def aux_loss(self, sae: SAEProtocol, x: torch.Tensor, residual: torch.Tensor,
                 dead: torch.Tensor) -> torch.Tensor:
        """The loss term on dead latents (architectures with `codes_by_rank`)."""
        raise NotImplementedError

    # --- the hand-written step ---

    def dense_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes f [b, m], mask [b, m] of where the gradient flows) for the dense step; may overwrite `pre`
        only when the architecture has no auxiliary loss (which reads the raw pre-activations)."""
        raise NotImplementedError

    def sparse_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> SparseCodes:
        """The batch's nonzero codes for the sparse step (`SparseCodes`)."""
        raise NotImplementedError

    def aux_grads(self, x: torch.Tensor, pre: torch.Tensor, dn: torch.Tensor, err: torch.Tensor,
                  dead: torch.Tensor) -> tuple[torch.Tensor, tuple] | None:
        """The step's part of `aux_loss`: (its squared error, (dead rows, their gradients)) or None."""
        raise NotImplementedError

    def after_step(self, stepper: StepperProtocol) -> None:
        """Whatever the architecture tracks across steps, updated after the optimiser step (default: nothing)."""

    # --- files in SAELens's layout ---

    def saelens_fields(self, cfg: SAEConfig) -> dict:
        """cfg.json fields beyond the common ones (written after them)."""
        return {}

    def saelens_tensors(self, sae: SAEProtocol) -> dict[str, torch.Tensor]:
        """Weights saved beyond W_enc, b_enc, W_dec, b_dec."""
        return {}

    def load_tensors(self, sae: SAEProtocol, weights: dict[str, torch.Tensor], path: Path) -> None:
        """Copy those extra weights back into `sae` (UserError when the folder lacks them)."""

    def foreign_config(self, raw: dict, d: int, m: int) -> SAEConfig:
        """Our config for a foreign SAELens cfg.json of `saelens_architecture` (architectures that `reads_saelens`)."""
        return SAEConfig(d_in=d, dict_size=m, arch=self.name)

    def check_fold(self, norms: torch.Tensor, path: Path) -> None:
        """UserError when a foreign SAE with these decoder row norms cannot be folded into unit rows exactly."""
