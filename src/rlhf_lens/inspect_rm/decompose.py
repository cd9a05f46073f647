"""The RM's score split exactly over an SAE on the state its head reads. The head is linear (score = w.x + b), and
the SAE writes x = sum_i f_i(x) d_i + b_dec + err(x), so

    score(x) = sum_i f_i(x) (w.d_i)  +  w.b_dec  +  w.err(x)  +  b

per text, with no approximation: feature i's contribution is f_i(x) (w.d_i), and what the dictionary does not
explain is the error term's own contribution w.err(x), never dropped (SARM, arXiv 2508.08746, builds the SAE into
the RM; here it is fitted to a trained RM from outside)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Decomposition:
    contributions: torch.Tensor
    """[n, m] float64: f_i(x) (w.d_i) per text and feature."""
    error: torch.Tensor
    """[n] float64: w.err(x), the SAE's error term's contribution."""
    constant: float
    """w.b_dec + b: the same for every text."""
    scores: torch.Tensor
    """[n] float64: the RM's own score of each state (its head, in the head's dtype, as the RM computes it)."""

    def total(self) -> torch.Tensor:
        """[n]: the sum of the parts (equal to `scores` up to float64 rounding)."""
        return self.contributions.sum(1) + self.error + self.constant

    def max_relative_error(self) -> float:
        """max over texts |parts - score| / max(|score|, 1): how exact the split is."""
        if not len(self.scores):
            return 0.0
        return float(((self.total() - self.scores).abs() / self.scores.abs().clamp_min(1.0)).max())


def head_vector(head: nn.Linear) -> tuple[torch.Tensor, float]:
    """(w [d] float64, b): the RM's one-label linear head (b = 0 where it has no bias, as Llama's and GPT-NeoX's)."""
    w = head.weight.detach()[0].double().cpu()
    b = float(head.bias.detach()[0]) if head.bias is not None else 0.0
    return w, b


@torch.no_grad()
def decompose_scores(sae, head: nn.Linear, states: torch.Tensor, batch_size: int = 1024) -> Decomposition:
    """Each state's score split over `sae`'s features (its inference codes), the error term and the constant."""
    w, b = head_vector(head)
    dictionary = sae.dictionary.double().cpu()
    per_feature = dictionary @ w  # w.d_i
    b_dec = sae.b_dec.detach().double().cpu()
    contributions, errors = [], []
    for start in range(0, len(states), batch_size):
        x = states[start:start + batch_size].float()
        codes = sae.encode(x.to(sae.decoder.device)).double().cpu()
        reconstruction = codes @ dictionary + b_dec
        contributions.append(codes * per_feature)
        errors.append((x.double() - reconstruction) @ w)
    m = dictionary.shape[0]
    return Decomposition(
        contributions=torch.cat(contributions) if contributions else torch.zeros(0, m, dtype=torch.float64),
        error=torch.cat(errors) if errors else torch.zeros(0, dtype=torch.float64),
        constant=float(b_dec @ w) + b,
        scores=head(states.to(head.weight.device, head.weight.dtype))[:, 0].double().cpu())
