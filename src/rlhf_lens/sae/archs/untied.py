"""The ReLU SAE with a free encoder (`--arch untied`): f = ReLU(x E^T + b_enc), sparsity by the L1 term."""

from __future__ import annotations

import torch

from .base import Architecture, SAEProtocol, SparseCodes, StepperProtocol


class Untied(Architecture):
    """ReLU codes; saved as a SAELens "standard" SAE, and SAELens's standard SAEs load as this."""

    name = "untied"
    reads_saelens = True

    def encode(self, sae: SAEProtocol, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def dense_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = pre.shape
        mask = torch.gt(pre, 0, out=stepper.buf("mask", b, m, torch.bool))
        return pre.relu_(), mask  # in place: the ReLU SAE has no auxiliary loss to read `pre` afterwards

    def sparse_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> SparseCodes:
        b, m = pre.shape
        flat = pre.view(-1)
        pos = torch.nonzero(torch.gt(flat, 0, out=stepper.buf("mask1", 1, b * m, torch.bool).view(-1))).view(-1)
        vals = flat.index_select(0, pos)
        row = pos.div(m, rounding_mode="floor")
        col = pos - row * m
        crow = torch.searchsorted(pos, torch.arange(b + 1) * m)
        return vals, row, col, crow, None
