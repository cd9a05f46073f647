"""The PPO math (the RLHF stage's objective), with TRL 0.7's (2023) semantics; small pure functions the tests hit.

One PPO step: sample `batch_size` prompts (train split) and responses of 8..19 tokens; score
prompt + response with the reward; per-token reward = -beta * (logp - logp_ref), plus the score
at the last response token; GAE (gamma, lambda) on a value head's estimates; whitened
advantages; `ppo_epochs` passes over shuffled minibatches with the clipped policy loss and the
clipped value loss; then the adaptive KL controller updates beta. docs/rlhf.md says exactly
what follows TRL 0.7 and what differs. The step itself is `trainer._Trainer.train_step`.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance over the masked entries, with Bessel's correction (as TRL)."""
    n = mask.sum()
    centered = x - masked_mean(x, mask)
    return masked_mean(centered**2, mask) * n / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8), statistics over the masked entries of the whole batch."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + 1e-8)


def kl_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
               beta: float, kl: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -beta * KL, plus the score at each response's last token.

    Returns (rewards [B, T], kl [B, T]); kl is the given per-token estimate (e.g. `full_kl`) or
    k1 = logp - logp_ref, zero where masked.
    """
    kl = (logprobs - ref_logprobs if kl is None else kl) * mask
    rewards = -beta * kl
    last = mask.sum(1).long() - 1  # responses start at column 0 and are contiguous
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, kl


def full_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(policy || reference) of the next-token distributions at each position: [B, T, V] -> [B, T].

    An exact KL is >= 0; the float sum over V can land a few ulps below 0 where policy = reference
    (the first step), so the rounding is clamped off rather than logged as a negative KL."""
    logp, ref_logp = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1).clamp_min(0.0)


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. Returns (advantages, returns = advantages + values).

    Masked steps have value and reward 0, so an episode ends at its last response token.
    """
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages, advantages + values


def ppo_loss(logprobs: torch.Tensor, values: torch.Tensor, old_logprobs: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
             cliprange_value: float, vf_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss + vf_coef * clipped value loss (0.5 * max of squared errors), masked means."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_losses = torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    value_loss = 0.5 * masked_mean(value_losses, mask)
    ratio = torch.exp(logprobs - old_logprobs)
    policy_losses = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    policy_loss = masked_mean(policy_losses, mask)
    stats = {
        "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
        "ratio": masked_mean(ratio, mask).detach(),
        "approx_kl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask).detach(),
        "clipfrac": masked_mean((policy_losses > -advantages * ratio).float(), mask).detach(),
        "value_clipfrac": masked_mean(((values - returns) ** 2 < (clipped_values - returns) ** 2).float(), mask).detach(),
    }
    return policy_loss + vf_coef * value_loss, stats


class KLController:
    """The KL coefficient beta: fixed, or adaptive (Ziegler et al. 2019) towards a target KL."""

    def __init__(self, init: float, target: float, horizon: int, adaptive: bool = True):
        self.value, self.target, self.horizon, self.adaptive = float(init), target, horizon, adaptive

    def update(self, kl: float, n_steps: int) -> None:
        """After a PPO step with mean response KL `kl` over `n_steps` rollouts."""
        if self.adaptive:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_steps / self.horizon


def lr_factor(step: int, warmup: int, total: int, schedule: str = "linear") -> float:
    """Learning-rate multiplier at PPO step `step` (0-based): (s+1)/(w+1) while s < w, then 1 (constant)
    or (total - s)/(total - w) (linear), so it is 1 at the first step after warm-up and never 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    return (total - step) / max(total - warmup, 1)


class ValueHead(nn.Module):
    """Dropout + linear on the LM's last hidden state (float32 whatever the LM's dtype)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(hidden.float())).squeeze(-1)
