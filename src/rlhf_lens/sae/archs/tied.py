"""The paper's SAE (`--arch tied`, the default): the ReLU SAE whose encoder is the normalised dictionary itself,
f = ReLU(x Wn^T + b_enc)."""

from __future__ import annotations

from .untied import Untied


class Tied(Untied):
    """Untied's codes and step without a free encoder (saved with W_enc = Wn^T; a foreign standard SAE loads as
    untied, since its encoder is free)."""

    name = "tied"
    has_encoder = False
    reads_saelens = False
