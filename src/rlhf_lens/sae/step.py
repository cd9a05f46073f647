"""The training step without autograd: forward, hand-written backward (dense GEMMs or sparse CSR products)
and fused Adam for one SAE. How a batch's codes are chosen, the auxiliary-k loss and BatchTopK's threshold are
the architecture's (`archs`). Gradients are checked against autograd in tests/test_sae.py."""

from __future__ import annotations

import warnings

import torch

from .config import SPARSE_MAX_DENSITY, SPARSE_MIN_WORK
from .model import SparseAutoencoder

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class Stepper:
    """Forward, hand-written backward and Adam for one SAE, without autograd.

    Dense path: five GEMMs (x E^T, f Dn, g Dn^T, f^T g, dpre^T x) into preallocated buffers.
    Sparse path (codes at most SPARSE_MAX_DENSITY dense): only x E^T stays dense; f is a CSR matrix,
    f Dn and the two weight gradients are sparse x dense products, and g Dn^T is needed only at the
    nonzeros of f (sampled_addmm).
    The architecture (`sae.arch`) gives the codes of each path (`dense_codes`, `sparse_codes`): ReLU, TopK, or
    BatchTopK's k * b largest codes of the whole batch. TopK/BatchTopK add the auxiliary-k loss on latents
    idle for cfg.dead_steps steps (`aux_grads`, dense over the dead columns only).

    On a GPU (the SAE's parameters on cuda) every step takes the dense path (cuBLAS GEMMs; CSR products
    there are slower than the dense ones they replace) and nothing in a step waits for the GPU: the step's
    statistics are returned as tensors, the BatchTopK threshold is updated on the device, and the dead-latent
    mask is read back only when some latent may have been idle for cfg.dead_steps steps (`idle_bound`).
    cfg.dtype bfloat16 runs the GEMMs on bf16 copies of their operands with float32 results (autocast-style);
    weights, gradients, Adam state and the loss stay float32.
    """

    def __init__(self, sae: SparseAutoencoder, l1: float, lr: float):
        self.sae = sae
        self.arch = sae.arch
        self.device = sae.decoder.device
        self.lowp = torch.bfloat16 if sae.cfg.dtype == "bfloat16" else None
        self.l1 = 0.0 if self.arch.codes_by_rank else float(l1)
        self.idle = torch.zeros(sae.cfg.dict_size, dtype=torch.int64, device=self.device)
        """Steps since each latent last fired."""
        self.idle_bound = 0
        """An upper bound on max(idle), known without reading the device: steps since it was last read."""
        self.threshold_steps = 0
        """BatchTopK: steps its threshold has been updated (the bias correction's count)."""
        self.min_kept: torch.Tensor | None = None
        """BatchTopK: the smallest positive code the last batch kept (inf when none), on the device."""
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
        self._slope_key: tuple[int, float] | None = None

    def buf(self, name: str, rows: int, cols: int, dtype=torch.float32) -> torch.Tensor:
        """A reused [rows, cols] scratch tensor (no page-faulting fresh allocation every step)."""
        numel = rows * cols
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(rows, cols)

    def dead_mask(self) -> torch.Tensor | None:
        """Latents idle for cfg.dead_steps steps or more (None when that rule is off)."""
        steps = self.sae.cfg.dead_steps
        return None if steps <= 0 else self.idle >= steps

    def maybe_dead(self) -> bool:
        """False when no latent can be dead yet, decided without a device read while the bound allows."""
        steps = self.sae.cfg.dead_steps
        if steps <= 0:
            return False
        if self.idle_bound >= steps:
            self.idle_bound = int(self.idle.max())  # one read; then again only when the bound reaches `steps`
        return self.idle_bound >= steps

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on the batch x [b, d]; returns (sum of squared errors, sum of codes, fire counts
        [m]) as tensors on the SAE's device (read them only when needed: each read waits for a GPU)."""
        stats = self.grads(x)
        self.opt.step()
        counts = stats[2]
        self.idle.add_(1).masked_fill_(counts > 0, 0)
        self.idle_bound += 1
        self.arch.after_step(self)
        return stats

    @torch.no_grad()
    def grads(self, x: torch.Tensor, sparse: bool | None = None,
              dead: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the loss gradients into .grad; return (sum of squared errors, sum of codes, fire counts [m]).
        `dead` [m] overrides the dead-latent mask of the auxiliary-k loss (topk/batchtopk)."""
        sae, cfg = self.sae, self.sae.cfg
        if not self.arch.codes_by_rank:
            self._dead = None
        elif dead is not None:
            self._dead = dead
        else:
            self._dead = self.dead_mask() if self.maybe_dead() else None
        self._aux_grads = None
        self.aux_sq = 0.0
        b, d = x.shape
        m = cfg.dict_size
        raw = sae.decoder.detach()
        r = raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dn = raw / r
        enc = dn if sae.encoder is None else sae.encoder.detach()
        pre = self._gemm(x, enc.t(), self.buf("pre", b, m), bias=sae.b_enc.detach())
        if sparse is None:
            density = cfg.k / m if self.arch.codes_by_rank else self.density
            sparse = density <= SPARSE_MAX_DENSITY and b * m * d >= SPARSE_MIN_WORK and self.device.type == "cpu"
        elif sparse and (self.device.type != "cpu" or self.lowp is not None):
            raise ValueError("the sparse path runs on the CPU in float32 only")
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

    def _gemm(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None,
              accumulate: bool = False) -> torch.Tensor:
        """out = a @ b (+ bias; or out += a @ b), float32 out; with cfg.dtype bfloat16 the product runs on bf16
        copies of a and b (float32 accumulation inside the GEMM, as autocast does)."""
        if self.lowp is None:
            if accumulate:
                return out.addmm_(a, b)
            if bias is not None:
                return torch.addmm(bias, a, b, out=out)
            return torch.mm(a, b, out=out)
        product = torch.mm(a.to(self.lowp), b.to(self.lowp))
        if accumulate:
            return out.add_(product)
        if bias is not None:
            return torch.add(bias, product, out=out)
        return out.copy_(product)

    def _dense(self, x, pre, dn, g_dec, g_enc):
        sae, cfg = self.sae, self.sae.cfg
        b, d = x.shape
        f, mask = self.arch.dense_codes(self, pre)
        x_hat = self._gemm(f, dn, self.buf("xhat", b, d), bias=sae.b_dec.detach())
        err = x_hat.sub_(x)
        self._aux(x, pre, dn, err)
        flat = err.view(-1)
        sq = torch.dot(flat, flat)
        g = err.mul_(2.0 / (b * d))
        if self.l1:  # the L1 slope rides in the GEMM's bias: no extra pass over [b, m]
            slope = self._bufs.get("slope")
            if slope is None or self._slope_key != (b, self.l1):  # rebuilt when the l1 warm-up moves l1
                slope = self._bufs["slope"] = torch.full((cfg.dict_size,), self.l1 / b, device=self.device)
                self._slope_key = (b, self.l1)
            dpre = self._gemm(g, dn.t(), self.buf("df", b, cfg.dict_size), bias=slope)
        else:
            dpre = self._gemm(g, dn.t(), self.buf("df", b, cfg.dict_size))
        dpre.mul_(mask)
        self._gemm(f.t(), g, g_dec)
        if g_enc is None:
            self._gemm(dpre.t(), x, g_dec, accumulate=True)
        else:
            self._gemm(dpre.t(), x, g_enc)
        torch.sum(dpre, dim=0, out=sae.b_enc.grad)
        torch.sum(g, dim=0, out=sae.b_dec.grad)
        counts = mask.sum(dim=0, dtype=torch.int32).long()  # int32 accumulation: fewer bytes than int64
        if self.device.type == "cpu":  # the next step's path choice (a GPU always takes the dense path)
            self.density = float(counts.sum()) / (b * cfg.dict_size)
        return sq, f.sum(), counts

    def _sparse(self, x, pre, dn, g_dec, g_enc):
        sae, cfg = self.sae, self.sae.cfg
        b, d = x.shape
        m = cfg.dict_size
        vals, row, col, crow, live = self.arch.sparse_codes(self, pre)
        f = torch.sparse_csr_tensor(crow, col, vals, (b, m), check_invariants=False)
        x_hat = torch.addmm(sae.b_dec.detach(), f, dn)
        err = x_hat.sub_(x)
        self._aux(x, pre, dn, err)
        flat_err = err.view(-1)
        sq = torch.dot(flat_err, flat_err)
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
        return sq, vals.sum(), counts

    def _aux(self, x: torch.Tensor, pre: torch.Tensor, dn: torch.Tensor, err: torch.Tensor) -> None:
        """The auxiliary-k loss on the dead latents (the architecture's `aux_grads`): its squared error goes to
        self.aux_sq and its gradients (rows of the dead latents) to self._aux_grads, added after the main ones."""
        if self._dead is None:
            return
        found = self.arch.aux_grads(x, pre, dn, err, self._dead)
        if found is not None:
            self.aux_sq, self._aux_grads = found
