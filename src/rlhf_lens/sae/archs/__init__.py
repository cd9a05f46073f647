"""SAE architectures, one module each, registered by name in `ARCHITECTURES`: `tied` (the paper's ReLU SAE),
`untied` (ReLU, free encoder), `topk` and `batchtopk`. Each module holds what differs between them: how
pre-activations become codes, its part of the hand-written training step, its extra state (BatchTopK's
threshold, the auxiliary-k loss) and how it is written in SAELens's layout; `base.Architecture` lists them.

A new architecture: a module here with an `Architecture` subclass, one entry in `ARCHITECTURES`, and its name in
`sae.config.ARCHS` (the torch-free list the settings are checked against; a test keeps the two equal).

The selection rules (`topk_codes` per row, `batch_topk` over a batch, `jumprelu` at a threshold) are also used
by the crosscoder (`decompose/crosscoder.py`).
"""

from __future__ import annotations

from .base import Architecture, SparseCodes
from .batchtopk import BatchTopK, batch_topk, jumprelu
from .tied import Tied
from .topk import TopK, topk_codes
from .untied import Untied

ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in (Tied(), Untied(), TopK(), BatchTopK())}
"""The registry: architecture name (`SAEConfig.arch`) -> what it decides."""


def get_arch(name: str) -> Architecture:
    """The registered architecture `name` (a checked `SAEConfig.arch`)."""
    return ARCHITECTURES[name]


def saelens_reader(architecture: str) -> Architecture | None:
    """The architecture a foreign SAELens folder whose cfg.json names `architecture` loads as (None: none does)."""
    for arch in ARCHITECTURES.values():
        if arch.reads_saelens and arch.saelens_architecture == architecture:
            return arch
    return None


def saelens_readable() -> list[str]:
    """The SAELens architectures a foreign folder may have."""
    return [arch.saelens_architecture for arch in ARCHITECTURES.values() if arch.reads_saelens]


__all__ = ["ARCHITECTURES", "Architecture", "BatchTopK", "SparseCodes", "Tied", "TopK", "Untied", "batch_topk",
           "get_arch", "jumprelu", "saelens_readable", "saelens_reader", "topk_codes"]
