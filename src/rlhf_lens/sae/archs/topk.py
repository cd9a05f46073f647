"""TopK SAE (`--arch topk --k K`, Gao et al. 2024): untied, each token keeps its K largest pre-activations (then
ReLU), no L1 term; dead latents get the auxiliary-k loss. `topk_codes` is the per-row selection, shared with the
crosscoder (`decompose/crosscoder.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserError
from ..config import AUX_COEFFICIENT, SAEConfig
from .base import Architecture, SAEProtocol, SparseCodes, StepperProtocol


def topk_codes(pre: torch.Tensor, k: int, score: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, ReLU(pre) at the k entries with the largest `score` (default: `pre` itself), 0 elsewhere."""
    if score is None:
        vals, idx = pre.topk(k, dim=-1)
    else:
        idx = score.topk(k, dim=-1).indices
        vals = pre.gather(-1, idx)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


class TopK(Architecture):
    """K codes per token; saved as a SAELens "topk" SAE (with `k`), and SAELens's TopK SAEs load as this."""

    name = "topk"
    codes_by_rank = True
    saelens_architecture = "topk"
    reads_saelens = True

    def encode(self, sae: SAEProtocol, pre: torch.Tensor) -> torch.Tensor:
        return topk_codes(pre, sae.cfg.k)

    def aux_loss(self, sae: SAEProtocol, x: torch.Tensor, residual: torch.Tensor,
                 dead: torch.Tensor) -> torch.Tensor:
        """Auxiliary-k loss: the k_aux = min(d/2, #dead) largest pre-activations among dead latents (no ReLU)
        reconstruct the residual e = x - x_hat; AUX_COEFFICIENT (Gao et al. 2024's 1/32) * min(#dead / (d/2), 1)
        (SAELens's dead-count scale) * the mean over batch and elements of (e_hat - e)^2, unnormalised like the
        main loss (Gao et al. normalise each error by its target's variance; docs/sae.md says how it differs)."""
        n_dead = int(dead.sum())
        k_aux = sae.cfg.d_in // 2
        scale = min(n_dead / k_aux, 1.0) if k_aux else 0.0
        k_aux = min(k_aux, n_dead)
        if k_aux == 0:
            return x.new_zeros(())
        pre = sae.pre_activations(x).masked_fill(~dead, float("-inf"))
        vals, idx = pre.topk(k_aux, dim=-1)
        f_aux = torch.zeros_like(pre).scatter(-1, idx, vals)
        return AUX_COEFFICIENT * scale * (f_aux @ sae.unit_dictionary() - residual).pow(2).mean()

    def dense_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = pre.shape
        vals, idx = pre.topk(stepper.sae.cfg.k, dim=1, sorted=False)
        f = stepper.buf("f", b, m).zero_().scatter_(1, idx, vals.relu_())
        return f, f > 0

    def sparse_codes(self, stepper: StepperProtocol, pre: torch.Tensor) -> SparseCodes:
        b = pre.shape[0]
        k = stepper.sae.cfg.k
        vals, idx = pre.topk(k, dim=1, sorted=False)
        idx, order = idx.sort(dim=1)  # CSR wants column indices sorted within a row
        vals = vals.gather(1, order).relu_().view(-1)
        col = idx.view(-1)
        row = torch.arange(b).repeat_interleave(k)
        crow = torch.arange(0, b * k + 1, k)
        return vals, row, col, crow, vals > 0

    def aux_grads(self, x: torch.Tensor, pre: torch.Tensor, dn: torch.Tensor, err: torch.Tensor,
                  dead: torch.Tensor) -> tuple[torch.Tensor, tuple] | None:
        """`aux_loss` by hand, dense over the dead latents' columns only: (its squared error, (dead rows, their
        dictionary, encoder and b_enc gradients)), added after the main ones; None when nothing is dead. `pre`
        must still hold the raw pre-activations and `err` = x_hat - x, unscaled."""
        b, d = x.shape
        dead_idx = dead.nonzero().view(-1)
        n_dead = dead_idx.numel()
        k_aux = d // 2
        if n_dead == 0 or k_aux == 0:
            return None
        scale = min(n_dead / k_aux, 1.0)
        k_aux = min(k_aux, n_dead)
        pre_d = pre.index_select(1, dead_idx)
        vals, idx = pre_d.topk(k_aux, dim=1, sorted=False)
        f_aux = torch.zeros_like(pre_d).scatter_(1, idx, vals)
        mask = torch.zeros_like(pre_d, dtype=torch.bool).scatter_(1, idx, True)
        dn_d = dn.index_select(0, dead_idx)
        r = torch.addmm(err, f_aux, dn_d)  # e_hat - e, with e = x - x_hat = -err
        coef = AUX_COEFFICIENT * scale
        aux_sq = coef * r.pow(2).sum()
        g = r.mul_(2.0 * coef / (b * d))
        dpre = (g @ dn_d.t()).mul_(mask)
        return aux_sq, (dead_idx, f_aux.t() @ g, dpre.t() @ x, dpre.sum(0))

    def saelens_fields(self, cfg: SAEConfig) -> dict:
        return {"k": cfg.k, "rescale_acts_by_decoder_norm": False}

    def foreign_config(self, raw: dict, d: int, m: int) -> SAEConfig:
        return SAEConfig(d_in=d, dict_size=m, arch=self.name, k=int(raw.get("k", 100)))

    def check_fold(self, norms: torch.Tensor, path: Path) -> None:
        # which codes are kept depends on their scale: folding non-unit norms into the encoder would change it
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise UserError(f"{path}: TopK SAE without unit-norm decoder rows cannot be folded exactly")
