"""The SAE model: `SparseAutoencoder` (what every architecture shares; what differs is asked of its entry in
the `archs` registry), dictionary row normalisation, and its files in SAELens's layout (save, load, foreign
SAELens SAEs folded into ours, `load_dictionary`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, first_line
from ..io import read_json, save_safetensors, write_json
from .archs import get_arch, saelens_readable, saelens_reader
from .config import CFG_FILE, METRICS_FILE, WEIGHTS_FILE, SAEConfig

_INIT_SEED_OFFSET = 0x5AE_5EED


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """Each row scaled to norm 1 (an all-zero row stays 0): how a dictionary's features are read."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SparseAutoencoder(nn.Module):
    """SAE with unit-norm decoder rows (the features); see the module docstring for the formulas."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.arch = get_arch(cfg.arch)
        """The architecture's entry in the registry (`archs`): what differs between architectures."""
        m, d = cfg.dict_size, cfg.d_in
        # offset: seed 0 must not replay other seed-0 draws (e.g. the synthetic ground truth itself)
        g = torch.Generator().manual_seed(_INIT_SEED_OFFSET + cfg.seed)
        w = torch.randn(m, d, generator=g)
        w = unit_rows(w)
        self.decoder = nn.Parameter(w)
        """Raw dictionary [m, d]; rows are normalised in every forward pass."""
        self.encoder = nn.Parameter(w.clone()) if self.arch.has_encoder else None
        """Untied/TopK/BatchTopK encoder [m, d] (row j reads feature j); None when tied."""
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if self.arch.learns_threshold:
            self.register_buffer("threshold", torch.zeros(m))
            """BatchTopK inference threshold per latent (all equal when trained here): f = pre * [pre > threshold]."""
        self.l1_used = cfg.l1
        self.metrics: dict = {}

    @property
    def dictionary(self) -> torch.Tensor:
        """The features: unit-norm decoder rows [m, d]."""
        with torch.no_grad():
            return self.unit_dictionary()

    def unit_dictionary(self) -> torch.Tensor:
        """The unit-norm decoder rows [m, d], with autograd (`dictionary` is the same without)."""
        return unit_rows(self.decoder)

    def encoder_matrix(self) -> torch.Tensor:
        """[m, d]: the rows the codes are read with (the normalised dictionary when tied)."""
        return self.unit_dictionary() if self.encoder is None else self.encoder

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise UserError(f"activations have width {x.shape[-1]} but the SAE expects d_in = {self.cfg.d_in}")
        return x.to(self.decoder.dtype)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """x E^T + b_enc [..., m] (E = the normalised dictionary when tied)."""
        return self._check_input(x) @ self.encoder_matrix().t() + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes f [..., m] (BatchTopK: the inference rule, JumpReLU at the learned threshold)."""
        return self.arch.encode(self, self.pre_activations(x))

    def train_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes as training computes them: BatchTopK keeps the k * b largest ReLU codes of the batch x [b, d]
        (ties broken as torch.topk does); every other architecture as `encode`."""
        return self.arch.train_codes(self, self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction x_hat [..., d] from codes [..., m]."""
        return f @ self.unit_dictionary() + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    def loss(self, x: torch.Tensor, l1: float | None = None, dead: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss by autograd (reference for the hand-written backward): mean-element MSE + l1 * mean_tokens ||f||_1
        (no L1 for topk/batchtopk), with training codes; plus, for topk/batchtopk with a `dead` mask [m], the auxiliary-k loss."""
        f = self.train_codes(x)
        x_hat = self.decode(f)
        l1 = (self.l1_used if l1 is None else l1) if not self.arch.codes_by_rank else 0.0
        loss = (x_hat - x).pow(2).mean() + l1 * f.abs().sum(-1).mean()
        if dead is not None and self.arch.codes_by_rank and bool(dead.any()):
            loss = loss + self.arch.aux_loss(self, x, (x - x_hat).detach(), dead)
        return loss

    # --- files (SAELens layout) ---

    def save(self, out_dir: str | Path, metadata: dict | None = None) -> Path:
        """Write cfg.json and sae_weights.safetensors (W_enc [d,m], b_enc, W_dec [m,d] unit rows, b_dec, and the
        architecture's own: BatchTopK's threshold, saved as a SAELens JumpReLU SAE)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            dn = self.dictionary.contiguous()
            w_enc = dn.t().contiguous() if self.encoder is None else self.encoder.detach().t().contiguous()
            tensors = {"W_enc": w_enc, "b_enc": self.b_enc.detach().clone(), "W_dec": dn,
                       "b_dec": self.b_dec.detach().clone()}
            tensors.update(self.arch.saelens_tensors(self))
        save_safetensors(out / WEIGHTS_FILE, tensors)
        from .. import __version__

        cfg = {
            "architecture": self.arch.saelens_architecture,
            "d_in": self.cfg.d_in, "d_sae": self.cfg.dict_size, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
            # SAELens reads the schema version from here (6.x layout); the rest is ours
            "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": None, **(metadata or {})},
            "rlhf_lens": {"version": __version__, "config": asdict(self.cfg), "l1_used": self.l1_used},
        }
        cfg.update(self.arch.saelens_fields(self.cfg))
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
                sae.arch.check_fold(norms, path)
                w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]
            sae.decoder.copy_(w_dec)
            if sae.encoder is not None:
                sae.encoder.copy_(w_enc.t())
            sae.b_enc.copy_(b_enc)
            sae.b_dec.copy_(b_dec)
            sae.arch.load_tensors(sae, weights, path)
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
    reader = saelens_reader(arch)
    if reader is None:
        raise UserError(f"{path}: SAE architecture {arch!r} is not supported ({' or '.join(saelens_readable())})")
    return reader.foreign_config(raw, d, m)


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


