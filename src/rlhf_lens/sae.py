"""Sparse autoencoders on stored activations: the paper's tied ReLU SAE (default), untied and TopK options.

Architecture (paper / design.md): dictionary W [m, d] with rows normalised to unit norm in the forward pass,

    f     = ReLU(x Wn^T + b_enc)          (TopK: keep the k largest pre-activations, then ReLU)
    x_hat = f Wn + b_dec
    loss  = mean over elements of (x_hat - x)^2  +  l1 * mean over tokens of ||f||_1

The MSE is averaged over the b*d elements (as the authors did with nn.MSELoss), so relative to the
"sum over d, mean over tokens" convention (SAELens) the effective sparsity weight is l1 * d: the paper's
l1 = 1e-3 acts like 0.512 at d = 512. Untied: a free encoder E [m, d] replaces Wn in the first line.

Training never uses autograd: `_Stepper` computes the five products of a step by hand and, once the codes are
sparse, runs the decoder products and the encoder/decoder weight gradients as sparse x dense products
(CSR, MKL), so a step costs little more than the one dense encoder GEMM. Gradients are checked against
autograd in tests/test_sae.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .errors import UserError, first_line
from .io import atomic_path, read_json, save_safetensors, write_json

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

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


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


# --- activation sources ---------------------------------------------------------------------------


@runtime_checkable
class ActivationSource(Protocol):
    """Rows of activations [n, d] served as shuffled batches (the store's layers implement it too)."""

    d: int
    n: int

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        """Shuffled float32 [b, d] batches covering every row exactly once per epoch, deterministic in
        (seed, epoch); memory bounded by a few shards. The last batch may be smaller."""
        ...


_INIT_SEED_OFFSET = 0x5AE_5EED


def _order_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1)


class TensorSource:
    """Activations held in memory: a tensor [n, d], or a safetensors file with key `activations` [n, d]."""

    def __init__(self, data: str | Path | torch.Tensor, key: str = "activations"):
        if isinstance(data, torch.Tensor):
            self.name = "tensor"
            acts = data
        else:
            self.name = str(data)
            acts = _read_tensor_file(Path(data), key)
        if acts.ndim != 2:
            raise UserError(f"{self.name}: {key!r} must be 2-D [n, d], got shape {list(acts.shape)}")
        if not acts.is_floating_point():
            raise UserError(f"{self.name}: {key!r} must be floating point, got {acts.dtype}")
        if acts.shape[0] < 1 or acts.shape[1] < 1:
            raise UserError(f"{self.name}: {key!r} is empty (shape {list(acts.shape)})")
        self.acts = acts.detach().to("cpu", torch.float32).contiguous()
        check_finite(self.acts, self.name)
        self.n, self.d = self.acts.shape

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(_order_seed(seed, epoch))
        perm = torch.randperm(self.n, generator=g)
        for start in range(0, self.n, batch_size):
            # sorted rows within a batch: same set, friendlier memory access
            yield self.acts.index_select(0, perm[start:start + batch_size].sort().values)


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """Each row scaled to norm 1 (an all-zero row stays 0): how a dictionary's features are read."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def check_finite(acts: torch.Tensor, name: str, chunk_rows: int = 65536) -> None:
    """UserError if `acts` holds NaN or inf (checked in row chunks: bounded extra memory)."""
    rows = acts.reshape(-1, acts.shape[-1]) if acts.ndim else acts.reshape(1, 1)
    total, first = 0, None
    for start in range(0, rows.shape[0], chunk_rows):
        bad = ~torch.isfinite(rows[start:start + chunk_rows])
        count = int(bad.sum())
        if count and first is None:
            first = start + int(bad.any(dim=1).nonzero()[0, 0])
        total += count
    if total:
        raise UserError(f"{name}: activations contain {total} NaN/inf values (first in row {first}); "
                        "fix or drop those rows")


def _read_tensor_file(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: no such file; pass a safetensors file with key {key!r} [n, d] or an activation store folder")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if key not in keys:
                raise UserError(f"{path}: no tensor {key!r} (keys: {', '.join(keys) or 'none'}); "
                                f"save the activations [n, d] under the key {key!r}")
            return fh.get_tensor(key)
    except UserError:
        raise
    except Exception as e:  # safetensors raises its own error types for a malformed header
        raise UserError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def open_source(spec: str | Path, layer: int | None = None) -> ActivationSource:
    """A safetensors file (key `activations`) or an activation store folder (with `layer`)."""
    path = Path(spec)
    if path.is_dir():
        from .store import ActivationStore  # helper C's module

        store = ActivationStore(path)
        if layer is None:
            if len(store.layers) != 1:
                raise UserError(f"{path}: the store holds layers {store.layers}; choose one with --layer")
            layer = store.layers[0]
        if layer not in store.layers:
            raise UserError(f"{path}: no layer {layer} in the store (layers: {store.layers})")
        return store.source(layer)
    if layer is not None:
        raise UserError("--layer applies to an activation store folder, not to a single file")
    return TensorSource(path)


# --- the model ---------------------------------------------------------------------------------------


class SparseAutoencoder(nn.Module):
    """SAE with unit-norm decoder rows (the features); see the module docstring for the formulas."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        m, d = cfg.dict_size, cfg.d_in
        # offset: seed 0 must not replay other seed-0 draws (e.g. the synthetic ground truth itself)
        g = torch.Generator().manual_seed(_INIT_SEED_OFFSET + cfg.seed)
        w = torch.randn(m, d, generator=g)
        w = unit_rows(w)
        self.decoder = nn.Parameter(w)
        """Raw dictionary [m, d]; rows are normalised in every forward pass."""
        self.encoder = None if cfg.arch == "tied" else nn.Parameter(w.clone())
        """Untied/TopK encoder [m, d] (row j reads feature j); None when tied."""
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.l1_used = cfg.l1
        self.metrics: dict = {}

    @property
    def dictionary(self) -> torch.Tensor:
        """The features: unit-norm decoder rows [m, d]."""
        with torch.no_grad():
            return self._dn()

    def _dn(self) -> torch.Tensor:
        return unit_rows(self.decoder)

    def encoder_matrix(self) -> torch.Tensor:
        """[m, d]: the rows the codes are read with (the normalised dictionary when tied)."""
        return self._dn() if self.encoder is None else self.encoder

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise UserError(f"activations have width {x.shape[-1]} but the SAE expects d_in = {self.cfg.d_in}")
        return x.to(self.decoder.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes f [..., m]."""
        x = self._check_input(x)
        pre = x @ self.encoder_matrix().t() + self.b_enc
        if self.cfg.arch == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return torch.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction x_hat [..., d] from codes [..., m]."""
        return f @ self._dn() + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    def loss(self, x: torch.Tensor, l1: float | None = None) -> torch.Tensor:
        """The training loss by autograd (reference for the hand-written backward): mean-element MSE + l1 * mean_tokens ||f||_1."""
        x_hat, f = self(x)
        l1 = (self.l1_used if l1 is None else l1) if self.cfg.arch != "topk" else 0.0
        return (x_hat - x).pow(2).mean() + l1 * f.abs().sum(-1).mean()

    # --- files (SAELens layout) ---

    def save(self, out_dir: str | Path, metadata: dict | None = None) -> Path:
        """Write cfg.json and sae_weights.safetensors (W_enc [d,m], b_enc, W_dec [m,d] unit rows, b_dec)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            dn = self.dictionary.contiguous()
            w_enc = dn.t().contiguous() if self.encoder is None else self.encoder.detach().t().contiguous()
            tensors = {"W_enc": w_enc, "b_enc": self.b_enc.detach().clone(), "W_dec": dn,
                       "b_dec": self.b_dec.detach().clone()}
        save_safetensors(out / WEIGHTS_FILE, tensors)
        from . import __version__

        cfg = {
            "architecture": "topk" if self.cfg.arch == "topk" else "standard",
            "d_in": self.cfg.d_in, "d_sae": self.cfg.dict_size, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
            # SAELens reads the schema version from here (6.x layout); the rest is ours
            "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": None, **(metadata or {})},
            "rlhf_lens": {"version": __version__, "config": asdict(self.cfg), "l1_used": self.l1_used},
        }
        if self.cfg.arch == "topk":
            cfg.update(k=self.cfg.k, rescale_acts_by_decoder_norm=False)
        write_json(out / CFG_FILE, cfg)
        return out

    @classmethod
    def load(cls, sae_dir: str | Path) -> SparseAutoencoder:
        """Load an SAE saved by `save` (or a standard / TopK SAE in SAELens's layout, folded into ours)."""
        path = Path(sae_dir)
        if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise UserError(f"{path}: not an SAE folder (needs {CFG_FILE} and {WEIGHTS_FILE}); train one with `rlhf-lens train-sae`")
        raw = read_json(path / CFG_FILE)
        weights = _read_weights(path)
        ours = raw.get("rlhf_lens")
        if ours is not None:
            cfg = SAEConfig.from_dict(ours.get("config", {}))
        else:
            cfg = _foreign_config(raw, path)
        m, d = cfg.dict_size, cfg.d_in
        expected = {"W_enc": (d, m), "b_enc": (m,), "W_dec": (m, d), "b_dec": (d,)}
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise UserError(f"{path}: {name} has shape {list(weights[name].shape)}, expected {list(shape)} "
                                f"from {CFG_FILE}; the folder is inconsistent")
        sae = cls(cfg)
        with torch.no_grad():
            w_enc, b_enc, w_dec, b_dec = (weights[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
            if ours is None:
                # fold SAELens's b_dec subtraction and decoder norms into encoder rows: f_ours = f_theirs * ||W_dec_j||
                if raw.get("apply_b_dec_to_input", True):
                    b_enc = b_enc - b_dec @ w_enc
                norms = w_dec.norm(dim=1).clamp_min(1e-12)
                if cfg.arch == "topk" and not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
                    raise UserError(f"{path}: TopK SAE without unit-norm decoder rows cannot be folded exactly")
                w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]
            sae.decoder.copy_(w_dec)
            if sae.encoder is not None:
                sae.encoder.copy_(w_enc.t())
            sae.b_enc.copy_(b_enc)
            sae.b_dec.copy_(b_dec)
        sae.l1_used = float(ours.get("l1_used", cfg.l1)) if ours else cfg.l1
        if (path / METRICS_FILE).is_file():
            sae.metrics = read_json(path / METRICS_FILE)
        return sae


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path / WEIGHTS_FILE))
    except Exception as e:
        raise UserError(f"{path / WEIGHTS_FILE}: not a readable safetensors file ({first_line(e)})") from None
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in weights]
    if missing:
        raise UserError(f"{path / WEIGHTS_FILE}: missing {', '.join(missing)}; not an SAE in SAELens's layout")
    return weights


def _foreign_config(raw: dict, path: Path) -> SAEConfig:
    arch = raw.get("architecture", "standard")
    try:
        d, m = int(raw["d_in"]), int(raw["d_sae"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path / CFG_FILE}: needs integer d_in and d_sae") from None
    if raw.get("normalize_activations", "none") not in ("none", None, False):
        raise UserError(f"{path}: SAEs with normalize_activations={raw['normalize_activations']!r} are not supported")
    if arch == "standard":
        return SAEConfig(d_in=d, dict_size=m, arch="untied")
    if arch == "topk":
        return SAEConfig(d_in=d, dict_size=m, arch="topk", k=int(raw.get("k", 100)))
    raise UserError(f"{path}: SAE architecture {arch!r} is not supported (standard or topk)")


def load_dictionary(sae: str | Path | SparseAutoencoder | torch.Tensor) -> torch.Tensor:
    """Unit-norm feature rows [m, d] of an SAE folder (W_dec), an SAE, or a raw [m, d] tensor."""
    if isinstance(sae, SparseAutoencoder):
        return sae.dictionary
    if isinstance(sae, torch.Tensor):
        w = sae.detach().float()
        name = "dictionary"
    else:
        path = Path(sae)
        if not (path / WEIGHTS_FILE).is_file():
            raise UserError(f"{path}: not an SAE folder (no {WEIGHTS_FILE}); train one with `rlhf-lens train-sae`")
        w = _read_weights(path)["W_dec"].float()
        name = str(path)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise UserError(f"{name}: a dictionary must be a non-empty [m, d] matrix, got shape {list(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise UserError(f"{name}: dictionary holds NaN/inf values")
    return unit_rows(w)


# --- the fast step ---------------------------------------------------------------------------------


class _Stepper:
    """Forward, hand-written backward and Adam for one SAE, without autograd.

    Dense path: five GEMMs (x E^T, f Dn, g Dn^T, f^T g, dpre^T x) into preallocated buffers.
    Sparse path (codes at most SPARSE_MAX_DENSITY dense): only x E^T stays dense; f is a CSR matrix,
    f Dn and the two weight gradients are sparse x dense products, and g Dn^T is needed only at the
    nonzeros of f (sampled_addmm).
    """

    def __init__(self, sae: SparseAutoencoder, l1: float, lr: float):
        self.sae = sae
        self.l1 = 0.0 if sae.cfg.arch == "topk" else float(l1)
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

    def step(self, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        stats = self.grads(x)
        self.opt.step()
        return stats

    @torch.no_grad()
    def grads(self, x: torch.Tensor, sparse: bool | None = None) -> tuple[float, float, torch.Tensor]:
        """Write the loss gradients into .grad; return (sum of squared errors, sum of codes, fire counts [m])."""
        sae, cfg = self.sae, self.sae.cfg
        b, d = x.shape
        m = cfg.dict_size
        raw = sae.decoder.detach()
        r = raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dn = raw / r
        enc = dn if sae.encoder is None else sae.encoder.detach()
        pre = torch.addmm(sae.b_enc.detach(), x, enc.t(), out=self._buf("pre", b, m))
        if sparse is None:
            density = cfg.k / m if cfg.arch == "topk" else self.density
            sparse = density <= SPARSE_MAX_DENSITY and b * m * d >= SPARSE_MIN_WORK
        g_dec, g_enc = sae.decoder.grad, (None if sae.encoder is None else sae.encoder.grad)
        if sparse:
            sq, l1sum, counts = self._sparse(x, pre, dn, g_dec, g_enc)
        else:
            sq, l1sum, counts = self._dense(x, pre, dn, g_dec, g_enc)
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
        else:
            mask = torch.gt(pre, 0, out=self._buf("mask", b, cfg.dict_size, torch.bool))
            f = pre.relu_()
        x_hat = torch.addmm(sae.b_dec.detach(), f, dn, out=self._buf("xhat", b, d))
        err = x_hat.sub_(x)
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


# --- training ------------------------------------------------------------------------------------------


class _Run:
    """The state of one SAE being trained: model, stepper, epoch statistics, files."""

    def __init__(self, cfg: SAEConfig, out_dir: Path | None, l1: float):
        self.cfg, self.out_dir = cfg, out_dir
        self.sae = SparseAutoencoder(cfg)
        self.sae.l1_used = l1
        self.stepper = _Stepper(self.sae, l1, cfg.lr)
        self.epoch = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.calibration: dict | None = None
        self.last_epoch: dict = {}
        self._reset_epoch_stats()

    def _reset_epoch_stats(self) -> None:
        self.fired = torch.zeros(self.cfg.dict_size, dtype=torch.int64)
        self.sq = self.l1sum = 0.0
        self.nnz = 0
        self.rows = 0

    def step(self, x: torch.Tensor) -> tuple[float, float]:
        t0 = time.perf_counter()
        sq, l1sum, counts = self.stepper.step(x)
        self.train_seconds += time.perf_counter() - t0
        b, d = x.shape
        if not math.isfinite(sq):
            raise UserError(f"SAE m={self.cfg.dict_size} seed={self.cfg.seed} diverged (loss is NaN/inf); "
                            "lower --lr or check the activations' scale")
        self.fired += counts
        nnz = int(counts.sum())
        self.sq += sq
        self.l1sum += l1sum
        self.nnz += nnz
        self.rows += b
        self.tokens_seen += b
        loss = sq / (b * d) + self.stepper.l1 * l1sum / b
        return loss, nnz / b

    def end_epoch(self) -> None:
        rows = max(self.rows, 1)
        self.last_epoch = {
            "epoch": self.epoch, "train_mse": self.sq / (rows * self.cfg.d_in), "train_l0": self.nnz / rows,
            "dead_fraction": float((self.fired == 0).float().mean()),
        }
        self.epoch += 1
        self._reset_epoch_stats()

    # checkpoint: weights, Adam state, epoch, RNG, counters
    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        state = {"config": asdict(self.cfg), "l1": self.stepper.l1 if self.cfg.arch != "topk" else self.cfg.l1,
                 "epoch": self.epoch, "model": self.sae.state_dict(), "optim": self.stepper.opt.state_dict(),
                 "rng": torch.get_rng_state(), "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "wall_seconds": self.wall_seconds, "last_epoch": self.last_epoch, "calibration": self.calibration}
        with atomic_path(self.out_dir / CHECKPOINT_FILE) as tmp:
            torch.save(state, tmp)

    def restore(self, state: dict) -> None:
        self.sae.load_state_dict(state["model"])
        self.stepper.opt.load_state_dict(state["optim"])
        for p in self.stepper.opt.param_groups[0]["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.tokens_seen = int(state["tokens_seen"])
        self.train_seconds = float(state["train_seconds"])
        self.wall_seconds = float(state.get("wall_seconds", 0.0))
        self.last_epoch = state.get("last_epoch") or {}
        self.calibration = state.get("calibration")


def _read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"{path}: unreadable checkpoint (killed while writing?); delete it to start that SAE afresh") from None


def _finished(out_dir: Path, cfg: SAEConfig) -> bool:
    """True if out_dir holds a finished SAE of this config; UserError if it holds another one."""
    cfg_path = out_dir / CFG_FILE
    ckpt = out_dir / CHECKPOINT_FILE
    if ckpt.is_file():
        saved = _read_checkpoint(ckpt)["config"]
        if saved != asdict(cfg):
            raise UserError(f"{out_dir}: holds a checkpoint of a different SAE config; use another output folder or delete it")
        return False
    if cfg_path.is_file() and (out_dir / METRICS_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file():
        saved = (read_json(cfg_path).get("rlhf_lens") or {}).get("config")
        if saved != asdict(cfg):
            raise UserError(f"{out_dir}: holds an SAE of a different config; use another output folder or delete it")
        return True
    return False


def train_saes(source: ActivationSource, configs: list[SAEConfig], out_dirs: list[Path] | None = None, *,
               metadata: dict | None = None, eval_tokens: int = EVAL_TOKENS, quiet: bool = False) -> list[SparseAutoencoder]:
    """Train every SAE in `configs` on `source`, feeding each batch to all SAEs that share a batch size and
    data seed (one pass over the data per epoch). With `out_dirs`, each SAE is checkpointed after every
    epoch (a rerun resumes), and written as cfg.json + sae_weights.safetensors + metrics.json; a folder
    that already holds the finished SAE is loaded, not retrained. Returns the SAEs (`.metrics` filled)."""
    from .progress import console

    if not configs:
        raise UserError("no SAE to train: give at least one dictionary size")
    if out_dirs is not None:
        out_dirs = [Path(p) for p in out_dirs]
        if len(out_dirs) != len(configs):
            raise UserError(f"{len(configs)} SAE configs but {len(out_dirs)} output folders")
        if len(set(map(str, out_dirs))) != len(out_dirs):
            raise UserError("two SAEs would be written to the same folder; give each its own")
    for cfg in configs:
        cfg.check()
        if cfg.d_in != source.d:
            raise UserError(f"SAE d_in {cfg.d_in} does not match the activations' width {source.d}")
    results: list[SparseAutoencoder | None] = [None] * len(configs)
    runs: list[tuple[int, _Run]] = []
    for i, cfg in enumerate(configs):
        out = out_dirs[i] if out_dirs is not None else None
        if out is not None and _finished(out, cfg):
            results[i] = SparseAutoencoder.load(out)
            continue
        state = _read_checkpoint(out / CHECKPOINT_FILE) if out is not None and (out / CHECKPOINT_FILE).is_file() else None
        if state is not None:
            run = _Run(cfg, out, float(state["l1"]))
            run.restore(state)
        else:
            calibration = None
            l1 = cfg.l1
            if cfg.target_l0 is not None:
                l1, calibration = calibrate_l1(source, cfg, quiet=quiet)
            run = _Run(cfg, out, l1)
            run.calibration = calibration
        runs.append((i, run))

    if runs and max(r.cfg.batch_size * r.cfg.dict_size * r.cfg.d_in for _, r in runs) < SINGLE_THREAD_WORK:
        with _one_thread():
            _train_groups(source, runs, eval_tokens, quiet)
    else:
        _train_groups(source, runs, eval_tokens, quiet)
    for i, run in runs:
        for message in run.sae.metrics["warnings"]:
            if not quiet:
                console.print(f"[yellow]warning[/yellow] SAE m={run.cfg.dict_size} seed={run.cfg.seed}: {message}")
        if run.out_dir is not None:
            run.sae.save(run.out_dir, metadata=metadata)
            write_json(run.out_dir / METRICS_FILE, run.sae.metrics)
            (run.out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        results[i] = run.sae
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_groups(source: ActivationSource, runs: list[tuple[int, _Run]], eval_tokens: int, quiet: bool) -> None:
    """The passes over the data: SAEs with the same batch size and data seed share every batch."""
    from .progress import progress_bar

    groups: dict[tuple[int, int], list[_Run]] = {}
    for _, run in runs:
        groups.setdefault((run.cfg.batch_size, run.cfg.data_seed), []).append(run)
    progress = progress_bar()
    if quiet:
        progress.disable = True  # before the live display starts
    with progress:
        for (batch_size, data_seed), group in groups.items():
            steps_per_epoch = math.ceil(source.n / batch_size)
            tasks = {id(run): progress.add_task(
                f"SAE m={run.cfg.dict_size} s={run.cfg.seed}", total=steps_per_epoch * run.cfg.epochs,
                completed=steps_per_epoch * run.epoch) for run in group}
            first = min(run.epoch for run in group)
            last = max(run.cfg.epochs for run in group)
            for epoch in range(first, last):
                active = [run for run in group if run.epoch == epoch < run.cfg.epochs]
                if not active:
                    continue
                last_update = 0.0
                epoch_start = time.perf_counter()
                for x in source.batches(batch_size, data_seed, epoch):
                    if x.shape[0] == 0:
                        continue
                    x = x.to(torch.float32).contiguous()
                    check_finite(x, "activation batch")
                    shown = []
                    for run in active:
                        shown.append(run.step(x))
                    now = time.perf_counter()
                    for run, (loss, l0) in zip(active, shown):
                        desc = None
                        if now - last_update > 0.5:
                            desc = f"SAE m={run.cfg.dict_size} s={run.cfg.seed} loss {loss:.4g} L0 {l0:.1f}"
                        progress.update(tasks[id(run)], advance=1, description=desc)
                    if now - last_update > 0.5:
                        last_update = now
                wall = time.perf_counter() - epoch_start
                for run in active:
                    run.wall_seconds += wall
                    run.end_epoch()
                    run.save_checkpoint()
        finished = [run for _, run in runs]
        if finished:
            _evaluate(source, finished, eval_tokens)


@torch.no_grad()
def _evaluate(source: ActivationSource, runs: list[_Run], eval_tokens: int) -> None:
    """Final metrics with the final weights on the first `eval_tokens` rows of the epoch-0 order."""
    batch_size, data_seed = runs[0].cfg.batch_size, runs[0].cfg.data_seed
    n = 0
    sum_x = torch.zeros(source.d, dtype=torch.float64)
    sum_x2 = 0.0
    sq = [0.0] * len(runs)
    nnz = [0] * len(runs)
    for x in source.batches(batch_size, data_seed, 0):
        x = x.to(torch.float32)
        take = min(x.shape[0], eval_tokens - n)
        x = x[:take]
        n += take
        sum_x += x.sum(0, dtype=torch.float64)
        sum_x2 += float(x.double().pow(2).sum())
        for j, run in enumerate(runs):
            x_hat, f = run.sae(x)
            sq[j] += float((x_hat - x).double().pow(2).sum())
            nnz[j] += int((f > 0).sum())
        if n >= eval_tokens:
            break
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n
    for j, run in enumerate(runs):
        cfg = run.cfg
        l0 = nnz[j] / n
        dead = run.last_epoch.get("dead_fraction", 0.0)
        metrics = {
            "mse": sq[j] / (n * cfg.d_in),
            "fvu": sq[j] / total_var if total_var > 0 else float("nan"),
            "mean_l0": l0,
            "dead_fraction": dead,
            "eval_tokens": n,
            "tokens_seen": run.tokens_seen,
            "epochs": run.epoch,
            "train_seconds": run.train_seconds,
            "wall_seconds": run.wall_seconds,
            "tokens_per_s": run.tokens_seen / run.train_seconds if run.train_seconds > 0 else None,
            "l1": run.stepper.l1 if cfg.arch != "topk" else None,
            "target_l0": cfg.target_l0,
            "calibration": run.calibration,
            "last_epoch": run.last_epoch,
        }
        flags = quality_flags(l0, dead, cfg)
        metrics.update(flags)
        run.sae.metrics = metrics


def quality_flags(mean_l0: float, dead_fraction: float, cfg: SAEConfig) -> dict:
    """`dense_codes`, `mostly_dead` flags and the warning sentences that go with them."""
    messages = []
    dense = mean_l0 > DENSE_L0_FRACTION * cfg.d_in
    mostly_dead = dead_fraction > MOSTLY_DEAD_FRACTION
    if dense:
        messages.append(f"dense codes: mean L0 {mean_l0:.1f} > {DENSE_L0_FRACTION:g} * d ({cfg.d_in}); "
                        "raise --l1 or use --target-l0")
    if mostly_dead:
        messages.append(f"{100 * dead_fraction:.0f}% of features never fired in the last epoch; "
                        "lower --l1 or use --target-l0")
    if cfg.target_l0 is not None and abs(mean_l0 - cfg.target_l0) > 0.5 * cfg.target_l0:
        messages.append(f"mean L0 {mean_l0:.1f} is far from --target-l0 {cfg.target_l0:g} (the search sample "
                        "behaves unlike the full run); retrain with a larger calibration sample or set --l1")
    return {"dense_codes": dense, "mostly_dead": mostly_dead, "warnings": messages}


# --- sparsity calibration --------------------------------------------------------------------------------


CALIBRATION_TOKENS = 65536
"""Rows of the data the l1 search trains on (all of it when the data are smaller)."""
CALIBRATION_MAX_STEPS = 3000
"""Most optimiser steps of one search trial (trials repeat the sample to match the full run's steps up to this)."""


def calibrate_l1(source: ActivationSource, cfg: SAEConfig, *, sample_tokens: int = CALIBRATION_TOKENS,
                 max_steps: int = CALIBRATION_MAX_STEPS, tolerance: float = 0.1, max_trials: int = 14,
                 quiet: bool = False) -> tuple[float, dict]:
    """Find the l1 whose SAE reaches mean L0 ~ cfg.target_l0: short trainings on a sample (same seed, batch
    size and lr; as many steps as the full run, up to `max_steps`, since L0 keeps falling with steps),
    bracketing the target by factors of 4 from cfg.l1, then bisecting in log l1 until the L0 is within
    `tolerance` (relative) of the target. Returns (l1, record of the search)."""
    if cfg.target_l0 is None:
        raise UserError("calibrate_l1 needs a config with target_l0")
    if source.n <= sample_tokens:
        sample_source: ActivationSource = source
    else:
        rows, taken = [], 0
        for x in source.batches(cfg.batch_size, cfg.data_seed, 0):
            rows.append(x[: sample_tokens - taken].to(torch.float32))
            taken += rows[-1].shape[0]
            if taken >= sample_tokens:
                break
        sample_source = TensorSource(torch.cat(rows))
    full_steps = cfg.epochs * math.ceil(source.n / cfg.batch_size)
    epoch_steps = math.ceil(sample_source.n / cfg.batch_size)
    trial_epochs = max(1, round(min(full_steps, max_steps) / epoch_steps))
    target = float(cfg.target_l0)
    trials: list[dict] = []

    def trial(l1: float) -> float:
        trial_cfg = dataclasses.replace(cfg, l1=l1, target_l0=None, epochs=trial_epochs)
        sae = train_saes(sample_source, [trial_cfg], None, eval_tokens=sample_source.n, quiet=True)[0]
        l0 = sae.metrics["mean_l0"]
        trials.append({"l1": l1, "mean_l0": l0})
        return l0

    lo = hi = None  # lo: l1 with L0 above target; hi: l1 with L0 at/below target
    l1 = cfg.l1
    for _ in range(max_trials):
        l0 = trial(l1)
        if abs(l0 - target) <= tolerance * target:
            break
        if l0 > target:
            lo = l1
        else:
            hi = l1
        if lo is not None and hi is not None:
            l1 = math.sqrt(lo * hi)
        elif lo is not None:
            l1 = lo * 4.0
        else:
            l1 = hi / 4.0
    best = min(trials, key=lambda t: abs(t["mean_l0"] - target))
    record = {"target_l0": target, "l1": best["l1"], "sample_l0": best["mean_l0"], "sample_tokens": sample_source.n,
              "trial_epochs": trial_epochs, "trial_steps": trial_epochs * epoch_steps, "full_steps": full_steps,
              "tolerance": tolerance, "trials": trials}
    if not quiet:
        from .progress import console

        console.print(f"l1 search: l1 {best['l1']:.3g} gives L0 {best['mean_l0']:.1f} (target {target:g}) "
                      f"after {len(trials)} trials on {sample_source.n} tokens")
    return best["l1"], record


def read_metrics(sae_dir: str | Path) -> dict:
    """metrics.json of an SAE folder."""
    return read_json(Path(sae_dir) / METRICS_FILE)


__all__ = ["ActivationSource", "TensorSource", "SAEConfig", "SparseAutoencoder", "train_saes", "calibrate_l1",
           "open_source", "load_dictionary", "check_finite", "read_metrics"]
