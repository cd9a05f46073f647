"""Bradley-Terry training of a reward model (docs/rm.md): loss -log sigmoid(r_chosen - r_rejected - margin) +
center_coef * mean((r_chosen + r_rejected)^2) (TRL's `RewardTrainer` terms), AdamW, one of three modes:

- head: the score head alone, on the frozen backbone's last-token states (`model.last_token_states`), computed once;
- blocks: the last `blocks` blocks, the final norm and the head, on the states entering those blocks, cached once;
- full: every parameter, on the texts.

With epochs = 0 the passes go on until the loss on the validation pairs (carved from the training pairs, never the
test pairs) has not improved for `PATIENCE` passes (at most max_epochs); the best pass's weights are kept."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..preferences.pairs import Pair
from .config import RMConfig
from .model import backbone, block_inputs, block_list, encode, last_token_states, score_head, tail_blocks, tail_scores

PATIENCE = 5
"""With epochs = 0: passes without a better validation loss before training stops."""
IMPROVEMENT = 1e-4
"""A validation loss counts as better when it is lower than the best by more than this."""
FINAL_NORMS = ("norm", "final_layer_norm", "ln_f")
"""The backbone's final norm in Llama, GPT-NeoX and GPT-2 (trained with the last blocks)."""


@dataclass
class Fit:
    """How a training went."""

    epochs: int
    """Passes made."""
    stopped: str
    """epochs (the passes asked for), converged (validation loss stopped improving) or max_epochs."""
    train_loss: list[float] = field(default_factory=list)
    """Mean training loss of each pass."""
    validation_loss: list[float] = field(default_factory=list)
    """Validation loss after each pass (epochs = 0 only)."""
    best_epoch: int = 0
    """The pass whose weights were kept (the last one unless epochs = 0)."""
    cache_seconds: float = 0.0
    """Seconds computing the cached states (head, blocks)."""
    fit_seconds: float = 0.0
    """Seconds of the passes."""


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
            center_coef: float = 0.0) -> torch.Tensor:
    """Mean Bradley-Terry loss of a batch: -log sigmoid(r_c - r_r - margin) + center_coef * mean((r_c + r_r)^2)."""
    difference = r_chosen - r_rejected - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(difference).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def pair_states(model, tokenizer, pairs: list[Pair], config: RMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, d], [n, d]): the last-token states of prompt + chosen and prompt + rejected of every pair (one pass)."""
    texts = [t for pair in pairs for t in pair.texts()]
    states = last_token_states(model, tokenizer, texts, config.max_length, config.batch_size,
                               description="rm: last-token states")
    return states[0::2], states[1::2]


def train_rm(model, tokenizer, pairs: list[Pair], train: list[int], validation: list[int], config: RMConfig,
             flip: list[bool] | None = None, states: tuple[torch.Tensor, torch.Tensor] | None = None,
             name: str = "rm") -> Fit:
    """Train `model` (a one-label sequence classifier, `load_reward_model`) in place on the pairs indexed by `train`
    (`validation`: the early-stopping pairs). `flip[i]`: pair i's label swapped (the placebo). `states`: the
    pairs' cached `pair_states` for train = head (computed here when not given)."""
    flip = flip or [False] * len(pairs)
    head = score_head(model)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():  # a seeded head: the same seed, the same bits
        head.weight.normal_(0.0, getattr(model.config, "initializer_range", 0.02), generator=generator)
        if head.bias is not None:
            head.bias.zero_()
    start = time.perf_counter()
    sides = [(p.texts()[::-1] if f else p.texts()) for p, f in zip(pairs, flip)]
    margins = torch.tensor([(p.margin or 0.0) if config.margin else 0.0 for p in pairs])
    model.requires_grad_(False)
    if config.train == "head":
        chosen, rejected = states if states is not None else pair_states(model, tokenizer, pairs, config)
        swap = torch.tensor(flip)[:, None]
        chosen, rejected = torch.where(swap, rejected, chosen), torch.where(swap, chosen, rejected)
        device = head.weight.device
        trained: list[nn.Module] = [head]

        def score(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return (head(chosen[idx].to(device, head.weight.dtype))[:, 0].float(),
                    head(rejected[idx].to(device, head.weight.dtype))[:, 0].float())
        return _fit(score, trained, train, validation, margins, config, start, name)
    if config.train == "blocks":
        texts = [t for pair in sides for t in pair]
        inputs = block_inputs(model, tokenizer, texts, config.blocks, config.max_length, config.batch_size,
                              description=f"{name}: states before the last {config.blocks} blocks")
        pad = model.config.pad_token_id
        norms = [getattr(backbone(model), n) for n in FINAL_NORMS if isinstance(getattr(backbone(model), n, None),
                                                                               nn.Module)]
        trained = [head, *norms, *list(block_list(model))[-config.blocks:]]

        def score(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            r = tail_scores(model, [inputs[2 * i + s] for i in idx for s in (0, 1)], pad)
            return r[0::2], r[1::2]
        with tail_blocks(model, config.blocks):
            return _fit(score, trained, train, validation, margins, config, start, name)

    def score(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = encode(tokenizer, [t for i in idx for t in sides[i]], config.max_length).to(head.weight.device)
        r = model(**batch, use_cache=False).logits[:, 0].float()
        return r[0::2], r[1::2]
    return _fit(score, [model], train, validation, margins, config, start, name)


def _fit(score: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]], trained: list[nn.Module],
         train: list[int], validation: list[int], margins: torch.Tensor, config: RMConfig, start: float,
         name: str) -> Fit:
    from ..progress import progress_bar

    fit = Fit(epochs=0, stopped="epochs", cache_seconds=time.perf_counter() - start)
    params = [p for module in trained for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(config.seed + 1)
    until_converged = config.epochs == 0
    passes = config.max_epochs if until_converged else config.epochs
    best, best_state, since_best = float("inf"), None, 0
    fit_start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"{name}: training ({config.train})", total=passes)
        for epoch in range(1, passes + 1):
            perm = torch.tensor(train)[torch.randperm(len(train), generator=order)].tolist()
            total = 0.0
            for at in range(0, len(perm), config.batch_size):
                idx = perm[at:at + config.batch_size]
                r_c, r_r = score(idx)
                loss = bt_loss(r_c, r_r, margins[idx].to(r_c.device), config.center_coef)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            fit.train_loss.append(total / len(perm))
            fit.epochs = epoch
            shown = f"loss {fit.train_loss[-1]:.4f}"
            if until_converged:
                loss = evaluate_loss(score, validation, margins, config)
                fit.validation_loss.append(loss)
                shown += f" validation {loss:.4f}"
                if loss < best - IMPROVEMENT:
                    best, since_best, fit.best_epoch = loss, 0, epoch
                    best_state = [copy.deepcopy(m.state_dict()) for m in trained]
                else:
                    since_best += 1
            bar.update(task, advance=1, description=f"{name}: training ({config.train}) {shown}")
            if until_converged and since_best >= PATIENCE:
                fit.stopped = "converged"
                break
        else:
            fit.stopped = "max_epochs" if until_converged else "epochs"
    if best_state is not None:
        for module, state in zip(trained, best_state):
            module.load_state_dict(state)
    else:
        fit.best_epoch = fit.epochs
    for p in params:
        p.requires_grad_(False)
    fit.fit_seconds = time.perf_counter() - fit_start
    return fit


def evaluate_loss(score: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]], idx: list[int],
                  margins: torch.Tensor, config: RMConfig) -> float:
    """Mean Bradley-Terry loss over the pairs `idx` (no gradient)."""
    total = 0.0
    with torch.no_grad():
        for at in range(0, len(idx), config.batch_size):
            part = idx[at:at + config.batch_size]
            r_c, r_r = score(part)
            total += bt_loss(r_c, r_r, margins[part].to(r_c.device), config.center_coef).item() * len(part)
    return total / max(1, len(idx))
