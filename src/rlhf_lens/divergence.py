"""Layer divergence: which transformer blocks did RLHF move most?

For block i the divergence is the sum, over every parameter tensor named in that
block (attention, MLP, norms; weights and biases), of the Frobenius norm of
(base - tuned). Embeddings, the final norm and the LM head belong to no block
and are left out. See docs/divergence.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .models import blocks_path, num_blocks


def layer_divergence(base_model: nn.Module, tuned_model: nn.Module, detail: bool = False) -> list[dict]:
    """Per-block divergence, sorted descending: `[{"layer": i, "divergence": x}, ...]`.

    With `detail=True` each row also has `"tensors": [{"name", "divergence"}, ...]`, names relative
    to the block (e.g. `mlp.dense_4h_to_h.weight`), in parameter order.
    """
    base_params, tuned_params = _matching_parameters(base_model, tuned_model)
    prefix = blocks_path(base_model) + "."
    n_blocks = num_blocks(base_model)
    per_block: list[list[tuple[str, float]]] = [[] for _ in range(n_blocks)]
    for name, base_param in base_params.items():
        if not name.startswith(prefix):
            continue  # embeddings, final norm, LM head: not part of any block
        index, _, rest = name[len(prefix):].partition(".")
        # float64 so that 1e-6-scale PPO changes on large tensors do not vanish in rounding
        diff = base_param.detach().to("cpu", torch.float64) - tuned_params[name].detach().to("cpu", torch.float64)
        per_block[int(index)].append((rest, float(torch.linalg.vector_norm(diff))))
    rows = []
    for layer, tensors in enumerate(per_block):
        row: dict = {"layer": layer, "divergence": math.fsum(value for _, value in tensors)}
        if detail:
            row["tensors"] = [{"name": name, "divergence": value} for name, value in tensors]
        rows.append(row)
    # Stable sort: equal divergences keep block order, so the ranking is reproducible.
    return sorted(rows, key=lambda r: -r["divergence"])


def divergence_from_specs(
    base: str, tuned: str, dtype: str = "float32", device: str = "cpu", detail: bool = False
) -> list[dict]:
    """Load base and tuned model (same dtype, so rounding cannot hide small changes) and rank their blocks."""
    from .models import load_model

    base_model, _ = load_model(base, device=device, dtype=dtype, tokenizer=False)
    tuned_model, _ = load_model(tuned, device=device, dtype=dtype, tokenizer=False)
    return layer_divergence(base_model, tuned_model, detail=detail)


def top_layers(rows: list[dict], n: int = 5) -> list[int]:
    """The `n` blocks with the highest divergence, most divergent first."""
    if n < 1:
        raise UserError(f"--top-n must be at least 1 (got {n})")
    ordered = sorted(rows, key=lambda r: -r["divergence"])
    return [int(r["layer"]) for r in ordered[:n]]


def divergence_spread(rows: list[dict]) -> dict:
    """Min, max, mean, standard deviation and coefficient of variation of the per-block divergence."""
    values = torch.tensor([float(r["divergence"]) for r in rows], dtype=torch.float64)
    if len(values) == 0:
        raise UserError("no divergence rows to summarise")
    mean = float(values.mean())
    std = float(values.std(unbiased=False))
    return {"min": float(values.min()), "max": float(values.max()), "mean": mean, "std": std,
            "cv": std / mean if mean > 0 else 0.0}


def plot_divergence(rows: list[dict], path: str | os.PathLike, top_n: int = 5, title: str | None = None) -> Path:
    """Bar chart of divergence by block (paper Figure 4), top-n highlighted, with its spread.

    Upper panel: divergence per block with the mean and +-1 std band. Lower panel: each block's
    deviation from the mean in percent, so that nearly equal blocks (as under Adam) are still told apart.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    if not rows:
        raise UserError("no divergence rows to plot")
    by_layer = sorted(rows, key=lambda r: r["layer"])
    layers = [int(r["layer"]) for r in by_layer]
    values = [float(r["divergence"]) for r in by_layer]
    top = set(top_layers(rows, min(top_n, len(rows))))
    spread = divergence_spread(rows)
    colors = ["tab:red" if layer in top else "tab:gray" for layer in layers]

    fig, (ax, ax_dev) = plt.subplots(2, 1, figsize=(max(6.0, 0.3 * len(layers) + 3), 6), sharex=True,
                                     gridspec_kw={"height_ratios": [2, 1]})
    ax.bar(layers, values, color=colors)
    ax.axhline(spread["mean"], color="black", linewidth=1, label=f"mean {spread['mean']:.4g}")
    ax.axhspan(spread["mean"] - spread["std"], spread["mean"] + spread["std"], color="black", alpha=0.1,
               label=f"+-1 std ({100 * spread['cv']:.2g}% of mean)")
    ax.set_ylabel("sum of Frobenius norms of (base - tuned)")
    ax.set_title(title or f"Layer divergence (top {len(top)} in red; range {spread['min']:.4g}..{spread['max']:.4g})")
    ax.legend(loc="lower right", fontsize="small")
    deviation = [100 * (v / spread["mean"] - 1) if spread["mean"] > 0 else 0.0 for v in values]
    ax_dev.bar(layers, deviation, color=colors)
    ax_dev.axhline(0, color="black", linewidth=0.8)
    ax_dev.set_ylabel("vs mean (%)")
    ax_dev.set_xlabel("block")
    ax_dev.set_xticks(layers)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def _matching_parameters(base_model: nn.Module, tuned_model: nn.Module) -> tuple[dict, dict]:
    """Named parameters of both models, after checking they have the same architecture and shapes."""
    base_type = getattr(getattr(base_model, "config", None), "model_type", None)
    tuned_type = getattr(getattr(tuned_model, "config", None), "model_type", None)
    if base_type != tuned_type:
        raise UserError(f"base and tuned models differ in architecture ({base_type} vs {tuned_type}); "
                        "compare a model with its own fine-tuned version")
    blocks_path(base_model)  # raises a clear error for an unsupported architecture
    if num_blocks(base_model) != num_blocks(tuned_model):
        raise UserError(f"base has {num_blocks(base_model)} blocks but tuned has {num_blocks(tuned_model)}; "
                        "compare a model with its own fine-tuned version")
    base_params = dict(base_model.named_parameters())
    tuned_params = dict(tuned_model.named_parameters())
    if base_params.keys() != tuned_params.keys():
        only = sorted(base_params.keys() ^ tuned_params.keys())
        raise UserError(f"base and tuned models have different parameters (e.g. {only[0]}); "
                        "compare a model with its own fine-tuned version")
    for name, base_param in base_params.items():
        tuned_param = tuned_params[name]
        if base_param.shape != tuned_param.shape:
            raise UserError(f"parameter {name} has shape {tuple(base_param.shape)} in base but "
                            f"{tuple(tuned_param.shape)} in tuned; compare a model with its own fine-tuned version")
        if base_param.dtype != tuned_param.dtype:
            raise UserError(f"parameter {name} is {base_param.dtype} in base but {tuned_param.dtype} in tuned; "
                            "load both models in the same dtype")
    return base_params, tuned_params
