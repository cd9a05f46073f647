"""Sparse autoencoders on stored activations: the paper's tied ReLU SAE (default), untied, TopK and BatchTopK.

Architecture (the paper; docs/sae.md): dictionary W [m, d] with rows normalised to unit norm in the forward pass,

    f     = ReLU(x Wn^T + b_enc)          (TopK: keep the k largest pre-activations, then ReLU)
    x_hat = f Wn + b_dec
    loss  = mean over elements of (x_hat - x)^2  +  l1 * mean over tokens of ||f||_1

The MSE is averaged over the b*d elements (as the authors did with nn.MSELoss), so relative to the
"sum over d, mean over tokens" convention (SAELens) the effective sparsity weight is l1 * d: the paper's
l1 = 1e-3 acts like 0.512 at d = 512. Untied: a free encoder E [m, d] replaces Wn in the first line.

The package: `config` (SAEConfig, the architecture names, constants; torch-free), `archs` (one module per
architecture, registered by name: its codes, its part of the training step, its SAELens export), `model`
(SparseAutoencoder and its files in SAELens's layout), `step` (the training step without autograd:
hand-written backward, dense or sparse products, Adam), `train` (`train_saes`, the entry point), `loop` (the
passes over the data shared by several SAEs), `training_run` (one SAE being trained: schedule, loss curve, the
stopping rule, resampling), `checkpoint` (epoch checkpoints and resume), `metrics` (final metrics,
quality flags) and `calibrate` (l1 search for a target L0). Activation sources live in `rlhf_lens.sources`;
their names are re-exported here.

A new architecture goes in `archs/` (see its docstring); a new training setting in `config.SAETraining`.
"""

from __future__ import annotations

import importlib

from .config import ARCHS, SAEConfig, SAETraining

# Served lazily (module __getattr__), so reading the settings above does not import torch.
_WHERE = {"ActivationSource": "..sources", "TensorSource": "..sources", "check_finite": "..sources",
          "open_source": "..sources", "SparseAutoencoder": ".model", "load_dictionary": ".model",
          "unit_rows": ".model", "calibrate_l1": ".calibrate", "quality_flags": ".metrics", "read_metrics": ".metrics",
          "train_saes": ".train"}

__all__ = ["ARCHS", "SAETraining", "ActivationSource", "TensorSource", "SAEConfig", "SparseAutoencoder", "train_saes",
           "calibrate_l1", "open_source", "load_dictionary", "check_finite", "read_metrics", "quality_flags",
           "unit_rows"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'rlhf_lens.sae' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
