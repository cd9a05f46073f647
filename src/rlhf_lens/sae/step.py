"""The training step without autograd: forward, hand-written backward (dense GEMMs or sparse CSR products)
and fused Adam for one SAE. Gradients are checked against autograd in tests/test_sae.py."""

from __future__ import annotations

import warnings

import torch

from .config import AUX_COEFFICIENT, SPARSE_MAX_DENSITY, SPARSE_MIN_WORK, THRESHOLD_RATE
from .model import SparseAutoencoder

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class _Stepper:
    """Forward, hand-written backward and Adam for one SAE, without autograd.

    Dense path: five GEMMs (x E^T, f Dn, g Dn^T, f^T g, dpre^T x) into preallocated buffers.
    Sparse path (codes at most SPARSE_MAX_DENSITY dense): only x E^T stays dense; f is a CSR matrix,
    f Dn and the two weight gradients are sparse x dense products, and g Dn^T is needed only at the
    nonzeros of f (sampled_addmm).
    BatchTopK keeps the k * b largest codes of the whole batch (one top-k over the flattened [b, m]
    pre-activations) and otherwise steps like TopK. TopK/BatchTopK add the auxiliary-k loss on latents
    idle for cfg.dead_steps steps (`_aux`, dense over the dead columns only).
    """

    def __init__(self, sae: SparseAutoencoder, l1: float, lr: float):
        self.sae = sae
        self.l1 = 0.0 if sae.cfg.codes_by_rank else float(l1)
        self.idle = torch.zeros(sae.cfg.dict_size, dtype=torch.int64)
        """Steps since each latent last fired."""
        self.threshold_steps = 0
        self._min_kept: float | None = None
        self.aux_sq = 0.0
        params = [p for p in (sae.decoder, sae.encoder, sae.b_enc, sae.b_dec) if p is not None]
        for p in params:
            p.grad = torch.zeros_like(p)
        try:
            self.opt = torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError):  # older torch without fused CPU Adam
            self.opt = torch.optim.Adam(params, lr=lr)
        self.density = 1.0  # the first step takes the dense path
        self._bufs: dict[str, torch.Tensor] = {}

    def _buf(self, name: str, rows: int, cols: int, dtype=torch.float32) -> torch.Tensor:
        """A reused [rows, cols] scratch tensor (no page-faulting fresh allocation every step)."""
        numel = rows * cols
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(rows, cols)

    def dead_mask(self) -> torch.Tensor | None:
        """Latents idle for cfg.dead_steps steps or more (None when that rule is off)."""
        steps = self.sae.cfg.dead_steps
        return None if steps <= 0 else self.idle >= steps

    def step(self, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        stats = self.grads(x)
        self.opt.step()
        counts = stats[2]
        self.idle.add_(1).masked_fill_(counts > 0, 0)
        if self._min_kept is not None:  # BatchTopK: bias-corrected running mean of the smallest kept code
            self.threshold_steps += 1
            rate = THRESHOLD_RATE
            thr = self.sae.threshold
            raw = thr * (1 - (1 - rate) ** (self.threshold_steps - 1))  # undo the previous correction
            raw = raw * (1 - rate) + rate * self._min_kept
            thr.copy_(raw / (1 - (1 - rate) ** self.threshold_steps))
        return stats

    @torch.no_grad()
    def grads(self, x: torch.Tensor, sparse: bool | None = None,
              dead: torch.Tensor | None = None) -> tuple[float, float, torch.Tensor]:
        """Write the loss gradients into .grad; return (sum of squared errors, sum of codes, fire counts [m]).
        `dead` [m] overrides the dead-latent mask of the auxiliary-k loss (topk/batchtopk)."""
        sae, cfg = self.sae, self.sae.cfg
        self._dead = (self.dead_mask() if dead is None else dead) if cfg.codes_by_rank else None
        self._aux_grads = None
        self.aux_sq = 0.0
        b, d = x.shape
        m = cfg.dict_size
        raw = sae.decoder.detach()
        r = raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dn = raw / r
        enc = dn if sae.encoder is None else sae.encoder.detach()
        pre = torch.addmm(sae.b_enc.detach(), x, enc.t(), out=self._buf("pre", b, m))
        if sparse is None:
            density = cfg.k / m if cfg.codes_by_rank else self.density
            sparse = density <= SPARSE_MAX_DENSITY and b * m * d >= SPARSE_MIN_WORK
        g_dec, g_enc = sae.decoder.grad, (None if sae.encoder is None else sae.encoder.grad)
        if sparse:
            sq, l1sum, counts = self._sparse(x, pre, dn, g_dec, g_enc)
        else:
            sq, l1sum, counts = self._dense(x, pre, dn, g_dec, g_enc)
        if self._aux_grads is not None:
            dead_idx, d_dn, d_enc, d_benc = self._aux_grads
            g_dec.index_add_(0, dead_idx, d_dn)
            (g_dec if g_enc is None else g_enc).index_add_(0, dead_idx, d_enc)
            sae.b_enc.grad.index_add_(0, dead_idx, d_benc)
        # backward through the row normalisation Dn = raw / ||raw||
        proj = (g_dec * dn).sum(dim=1, keepdim=True)
        g_dec.sub_(dn * proj).div_(r)
        return sq, l1sum, counts

    def _dense(self, x, pre, dn, g_dec, g_enc):
        sae, cfg = self.sae, self.sae.cfg
        b, d = x.shape
        if cfg.arch == "topk":
            vals, idx = pre.topk(cfg.k, dim=1, sorted=False)
            f = self._buf("f", b, cfg.dict_size).zero_().scatter_(1, idx, vals.relu_())
            mask = f > 0
        elif cfg.arch == "batchtopk":
            vals, pos = pre.view(-1).topk(min(cfg.k * b, b * cfg.dict_size), sorted=False)
            vals.relu_()
            self._note_min_kept(vals)
            f = self._buf("f", b, cfg.dict_size).zero_()
            f.view(-1).scatter_(0, pos, vals)
            mask = f > 0
        else:
            mask = torch.gt(pre, 0, out=self._buf("mask", b, cfg.dict_size, torch.bool))
            f = pre.relu_()
        x_hat = torch.addmm(sae.b_dec.detach(), f, dn, out=self._buf("xhat", b, d))
        err = x_hat.sub_(x)
        self._aux(x, pre, dn, err)
        flat = err.view(-1)
        sq = float(torch.dot(flat, flat))
        g = err.mul_(2.0 / (b * d))
        if self.l1:  # the L1 slope rides in the GEMM's bias: no extra pass over [b, m]
            slope = self._bufs.get(f"slope{b}")
            if slope is None:
                slope = self._bufs[f"slope{b}"] = torch.full((cfg.dict_size,), self.l1 / b)
            dpre = torch.addmm(slope, g, dn.t(), out=self._buf("df", b, cfg.dict_size))
        else:
            dpre = torch.mm(g, dn.t(), out=self._buf("df", b, cfg.dict_size))
        dpre.mul_(mask)
        torch.mm(f.t(), g, out=g_dec)
        if g_enc is None:
            g_dec.addmm_(dpre.t(), x)
        else:
            torch.mm(dpre.t(), x, out=g_enc)
        torch.sum(dpre, dim=0, out=sae.b_enc.grad)
        torch.sum(g, dim=0, out=sae.b_dec.grad)
        counts = mask.sum(dim=0, dtype=torch.int32).long()  # int32 accumulation: fewer bytes than int64
        self.density = float(counts.sum()) / (b * cfg.dict_size)
        return sq, float(f.sum()), counts

    def _sparse(self, x, pre, dn, g_dec, g_enc):
        sae, cfg = self.sae, self.sae.cfg
        b, d = x.shape
        m = cfg.dict_size
        live = None
        if cfg.arch == "topk":
            vals, idx = pre.topk(cfg.k, dim=1, sorted=False)
            idx, order = idx.sort(dim=1)  # CSR wants column indices sorted within a row
            vals = vals.gather(1, order).relu_().view(-1)
            col = idx.view(-1)
            row = torch.arange(b).repeat_interleave(cfg.k)
            crow = torch.arange(0, b * cfg.k + 1, cfg.k)
            live = vals > 0
        elif cfg.arch == "batchtopk":
            vals, pos = pre.view(-1).topk(min(cfg.k * b, b * m), sorted=False)
            pos, order = pos.sort()
            vals = vals.index_select(0, order).relu_()
            self._note_min_kept(vals)
            row = pos.div(m, rounding_mode="floor")
            col = pos - row * m
            crow = torch.searchsorted(pos, torch.arange(b + 1) * m)
            live = vals > 0
        else:
            flat = pre.view(-1)
            pos = torch.nonzero(torch.gt(flat, 0, out=self._buf("mask1", 1, b * m, torch.bool).view(-1))).view(-1)
            vals = flat.index_select(0, pos)
            row = pos.div(m, rounding_mode="floor")
            col = pos - row * m
            crow = torch.searchsorted(pos, torch.arange(b + 1) * m)
        f = torch.sparse_csr_tensor(crow, col, vals, (b, m), check_invariants=False)
        x_hat = torch.addmm(sae.b_dec.detach(), f, dn)
        err = x_hat.sub_(x)
        self._aux(x, pre, dn, err)
        flat_err = err.view(-1)
        sq = float(torch.dot(flat_err, flat_err))
        g = err.mul_(2.0 / (b * d))
        # dL/dpre at the nonzeros only: (g Dn^T) sampled on f's pattern, plus the L1 slope
        dvals = torch.sparse.sampled_addmm(f, g, dn.t(), beta=0.0).values()
        if self.l1:
            dvals.add_(self.l1 / b)
        if live is not None:
            dvals.mul_(live)
        # weight gradients f^T g and dpre^T x: one explicit transpose (sort by feature) shared by both,
        # then plain CSR x dense products (faster here than MKL's transposed product)
        col_sorted, perm = torch.sort(col, stable=True)
        crow_t = torch.searchsorted(col_sorted, torch.arange(m + 1))
        row_t = row.index_select(0, perm)
        f_t = torch.sparse_csr_tensor(crow_t, row_t, vals.index_select(0, perm), (m, b), check_invariants=False)
        dpre_t = torch.sparse_csr_tensor(crow_t, row_t, dvals.index_select(0, perm), (m, b), check_invariants=False)
        g_dec.copy_(f_t @ g)
        if g_enc is None:
            g_dec.add_(dpre_t @ x)
        else:
            g_enc.copy_(dpre_t @ x)
        sae.b_enc.grad.zero_().index_add_(0, col, dvals)
        torch.sum(g, dim=0, out=sae.b_dec.grad)
        counts = torch.bincount(col if live is None else col[live], minlength=m)
        self.density = float(counts.sum()) / (b * m)
        return sq, float(vals.sum()), counts

    def _note_min_kept(self, vals: torch.Tensor) -> None:
        kept = vals[vals > 0]
        self._min_kept = float(kept.min()) if kept.numel() else None

    def _aux(self, x: torch.Tensor, pre: torch.Tensor, dn: torch.Tensor, err: torch.Tensor) -> None:
        """Auxiliary-k loss on the dead latents (see SparseAutoencoder.aux_loss): its squared error goes to
        self.aux_sq and its gradients (rows of the dead latents) to self._aux_grads, added after the main ones.
        `pre` must still hold the raw pre-activations and `err` = x_hat - x, unscaled."""
        dead = self._dead
        if dead is None:
            return
        b, d = x.shape
        dead_idx = dead.nonzero().view(-1)
        n_dead = dead_idx.numel()
        k_aux = d // 2
        if n_dead == 0 or k_aux == 0:
            return
        scale = min(n_dead / k_aux, 1.0)
        k_aux = min(k_aux, n_dead)
        pre_d = pre.index_select(1, dead_idx)
        vals, idx = pre_d.topk(k_aux, dim=1, sorted=False)
        f_aux = torch.zeros_like(pre_d).scatter_(1, idx, vals)
        mask = torch.zeros_like(pre_d, dtype=torch.bool).scatter_(1, idx, True)
        dn_d = dn.index_select(0, dead_idx)
        r = torch.addmm(err, f_aux, dn_d)  # e_hat - e, with e = x - x_hat = -err
        coef = AUX_COEFFICIENT * scale
        self.aux_sq = coef * float(r.pow(2).sum())
        g = r.mul_(2.0 * coef / (b * d))
        dpre = (g @ dn_d.t()).mul_(mask)
        self._aux_grads = (dead_idx, f_aux.t() @ g, dpre.t() @ x, dpre.sum(0))
