"""BatchTopK SAE (`--arch batchtopk --k K`, Bussmann et al. 2024): untied; in training a batch of b tokens keeps
its K * b largest ReLU'd pre-activations, at inference a JumpReLU at the learned threshold (the bias-corrected
running mean of the smallest kept code). Saved as SAELens saves its own BatchTopK SAEs for inference: a JumpReLU
SAE with that threshold. `batch_topk` (the selection over a batch) and `jumprelu` (the inference rule) are shared
with the crosscoder (`decompose/crosscoder.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserError
from ..config import THRESHOLD_RATE, WEIGHTS_FILE, SAEConfig
from .base import SAEProtocol, SparseCodes, StepperProtocol
from .topk import TopK


def batch_topk(score: torch.Tensor, k: int, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, flat positions) of the k * rows largest entries of a batch `score` [rows, m] (all when fewer)."""
    flat = score.reshape(-1)
    return flat.topk(min(k * score.shape[0], flat.numel()), sorted=sorted)


def jumprelu(acts: torch.Tensor, threshold: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
    """`acts` where `score` (default: `acts` itself) is above `threshold`, 0 elsewhere."""
    return acts * ((acts if score is None else score) > threshold)


class BatchTopK(TopK):
    """TopK's auxiliary-k loss; its own codes, threshold tracking and files."""

    name = "batchtopk"
    learns_threshold = True
    saelens_architecture = "jumprelu"
    reads_saelens = False

    def encode(self, sae: SAEProtocol, pre: torch.Tensor) -> torch.Tensor:
        """The inference rule: f = ReLU(pre) * [pre > threshold]."""
        return jumprelu(torch.relu(pre), sae.threshold, score=pre)

    def train_codes(self, sae: SAEProtocol, pre: torch.Tensor) -> torch.Tensor:
        """The k * b largest ReLU codes of the batch (ties broken as torch.topk does)."""
        acts = pre.relu()
        vals, idx = batch_topk(acts, sae.cfg.k)
        return torch.zeros_like(acts.reshape(-1)).scatter(0, idx, vals).view_as(pre)

    def dense_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = pre.shape
        vals, pos = batch_topk(pre, stepper.sae.cfg.k, sorted=False)
        vals.relu_()
        _note_min_kept(stepper, vals)
        f = stepper.buf("f", b, m).zero_()
        f.view(-1).scatter_(0, pos, vals)
        return f, f > 0

    def sparse_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> SparseCodes:
        b, m = pre.shape
        vals, pos = batch_topk(pre, stepper.sae.cfg.k, sorted=False)
        pos, order = pos.sort()  # flat positions in order are CSR order
        vals = vals.index_select(0, order).relu_()
        _note_min_kept(stepper, vals)
        row = pos.div(m, rounding_mode="floor")
        col = pos - row * m
        crow = torch.searchsorted(pos, torch.arange(b + 1) * m)
        return vals, row, col, crow, vals > 0

    def after_step(self, stepper: StepperProtocol) -> None:
        """The threshold: bias-corrected running mean of the smallest kept code, updated on the SAE's device."""
        if stepper.min_kept is None:
            return
        stepper.threshold_steps += 1
        rate = THRESHOLD_RATE
        thr = stepper.sae.threshold
        raw = thr * (1 - (1 - rate) ** (stepper.threshold_steps - 1))  # undo the previous correction
        raw = raw * (1 - rate) + rate * stepper.min_kept
        # a batch with no positive code (min = inf) leaves the threshold as it was
        thr.copy_(torch.where(torch.isfinite(stepper.min_kept), raw / (1 - (1 - rate) ** stepper.threshold_steps), thr))

    def saelens_fields(self, cfg: SAEConfig) -> dict:
        return {}

    def saelens_tensors(self, sae: SAEProtocol) -> dict[str, torch.Tensor]:
        return {"threshold": sae.threshold.detach().clone()}

    def load_tensors(self, sae: SAEProtocol, weights: dict[str, torch.Tensor], path: Path) -> None:
        m = sae.cfg.dict_size
        if tuple(weights.get("threshold", torch.zeros(0)).shape) != (m,):
            raise UserError(f"{path}: a BatchTopK SAE needs a threshold [{m}] in {WEIGHTS_FILE}")
        sae.threshold.copy_(weights["threshold"].float())


def _note_min_kept(stepper: StepperProtocol, vals: torch.Tensor) -> None:
    """The smallest kept positive code of the batch (inf when none is positive), left on the device."""
    stepper.min_kept = torch.where(vals > 0, vals, torch.inf).min()
