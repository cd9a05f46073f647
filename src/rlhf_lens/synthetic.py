"""Ground truth for SAEs: activations built from known sparse feature directions in superposition, and
how many of those directions a trained dictionary recovers.

Data (Sharkey, Braun & Millidge 2022, independent features): F unit directions g_1..g_F in d dimensions
(F > d: superposition); each row is sum_j c_j g_j with c_j = u_j ~ Uniform(0, 1) when feature j is on
(probability `sparsity`, independently) and 0 otherwise, so the true mean L0 is F * sparsity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError, first_line
from .io import save_safetensors

if TYPE_CHECKING:
    import torch

CHUNK = 4096  # rows drawn per step: part of the data's definition (same seed, same rows)


@dataclass
class SyntheticConfig:
    """Synthetic activations with known features."""

    d: int = 48
    """Activation width."""
    features: int = 96
    """Number of true feature directions (more than d: superposition)."""
    sparsity: float = 0.04
    """Probability that a feature is on in a row (true mean L0 = features * sparsity)."""
    n: int = 262144
    """Number of rows."""
    seed: int = 0
    """Seed of the directions and the rows."""

    def check(self) -> None:
        for name in ("d", "features", "n"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if not 0 < self.sparsity <= 1:
            raise UserError(f"--sparsity is a probability in (0, 1] (got {self.sparsity})")


def make_synthetic(cfg: SyntheticConfig, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [n, d], ground_truth [F, d] unit rows), deterministic in the config. On a GPU (`device`) the
    rows are drawn there, by the GPU's generator: the same ground truth, deterministic, other rows than the CPU's."""
    import torch

    from .sae import unit_rows

    cfg.check()
    g = torch.Generator().manual_seed(cfg.seed)
    truth = torch.randn(cfg.features, cfg.d, generator=g)
    truth = unit_rows(truth)
    if torch.device(device).type != "cpu":
        g = torch.Generator(device).manual_seed(cfg.seed)
        truth = truth.to(device)
    acts = torch.empty(cfg.n, cfg.d, device=device)
    for start in range(0, cfg.n, CHUNK):
        rows = min(CHUNK, cfg.n - start)
        on = torch.rand(rows, cfg.features, generator=g, device=device) < cfg.sparsity
        coeff = torch.rand(rows, cfg.features, generator=g, device=device) * on
        torch.mm(coeff, truth, out=acts[start:start + rows])
    return acts, truth


def write_synthetic(cfg: SyntheticConfig, out: str | Path) -> Path:
    """Write `activations [n, d]` and `ground_truth [F, d]` to one safetensors file (atomic)."""
    acts, truth = make_synthetic(cfg)
    out = Path(out)
    save_safetensors(out, {"activations": acts, "ground_truth": truth},
                     metadata={"rlhf_lens_synthetic": json.dumps(asdict(cfg), sort_keys=True)})
    return out


def load_ground_truth(path: str | Path) -> torch.Tensor:
    """The `ground_truth [F, d]` tensor of a synthetic file (rows normalised)."""

    from safetensors import safe_open

    from .sae import unit_rows

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; write one with `rlhf-lens synthetic --out FILE`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            if "ground_truth" not in fh.keys():
                raise UserError(f"{path}: no tensor 'ground_truth' (keys: {', '.join(fh.keys())}); "
                                "use a file written by `rlhf-lens synthetic`")
            truth = fh.get_tensor("ground_truth").float()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    if truth.ndim != 2 or truth.shape[0] < 1:
        raise UserError(f"{path}: 'ground_truth' must be [F, d], got shape {list(truth.shape)}")
    return unit_rows(truth)


def recovery(sae, ground_truth, *, pair=None, threshold: float = 0.9, top_k: int = 10) -> dict:
    """How well a dictionary (and optionally its pair) recovers the true directions.

    For each dictionary: `recovered` = number of true directions whose best cosine with a dictionary row
    is >= threshold, and `gt_mmcs` = mean over true directions of that best cosine. With `pair`: the
    MMCS of the first dictionary against the pair and its top-k MMCS features, each with the cosine to
    its nearest true direction and whether that is >= threshold (`real`); `top_real_fraction` is their share.
    """
    import torch

    from .dictionaries import max_cosine, mmcs, pair_dictionaries, top_features

    truth = ground_truth if isinstance(ground_truth, torch.Tensor) else load_ground_truth(ground_truth)
    dictionary, truth = pair_dictionaries(sae, truth)

    def recovered(dic: torch.Tensor, name) -> dict:
        best, _ = max_cosine(truth, dic)
        hits = int((best >= threshold).sum())
        return {"sae": str(name), "dict_size": dic.shape[0], "recovered": hits,
                "recovered_fraction": hits / truth.shape[0], "gt_mmcs": float(best.mean())}

    label = lambda x: x if isinstance(x, (str, Path)) else type(x).__name__  # noqa: E731
    out: dict = {"threshold": threshold, "ground_truth_features": truth.shape[0], "d": truth.shape[1],
                 "dictionary": recovered(dictionary, label(sae))}
    if pair is not None:
        other, _ = pair_dictionaries(pair, truth)
        out["pair"] = recovered(other, label(pair))
        out["mmcs"] = mmcs(dictionary, other)
        top = top_features(dictionary, other, top_k)
        gt_cos, gt_idx = max_cosine(dictionary, truth)
        for row in top:
            i = row["feature"]
            row.update(gt_cosine=float(gt_cos[i]), gt_feature=int(gt_idx[i]), real=bool(gt_cos[i] >= threshold))
        out["top_features"] = top
        out["top_real_fraction"] = sum(r["real"] for r in top) / len(top)
    return out
