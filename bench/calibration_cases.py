"""The calibration bench's world and its cases (bench/calibration.py): a tiny GPT-NeoX pretrained on a real corpus,
and "tuned" models made from it, each with its own seed.

Null changes (a change that knows nothing of the reward):
- `direction`: a random direction added to one block's MLP output bias (constant in context);
- `finetune`: a few reward-free language-model steps on corpus text (context-dependent);
- `noise`: Gaussian noise on every weight (each scaled by that weight tensor's own spread).
Planted changes: `planted`, a direction aimed at a seeded handful of VADER-positive whole-word tokens through the
unembedding, added to one block's MLP output bias.
Every change is sized to a target KL(tuned || base) per token on corpus text, drawn per case from one range for
nulls and planted alike, so null and planted changes are of the same size (the demo's tune: KL ~0.38 nats/token).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NULL_KINDS = ("direction", "finetune", "noise")
PLANTED_KINDS = ("planted", "planted_finetune")
"""A direction aimed at positive words at one block; LM steps on the most positive train reviews (context-dependent)."""
STRONG = 2.0
"""VADER utility from which a word is one a planted change may aim at (love 3.2, great 3.1, like 2.0)."""
KL_RANGE = (0.25, 0.5)
"""Target KL(tuned || base), nats per token on corpus text, drawn per case (the demo's tune: ~0.38)."""


@dataclass
class World:
    """What every case shares: the corpus, the base model and its tokenizer, the reward's word sets."""

    corpus: str
    base: torch.nn.Module
    tokenizer: object
    model_dir: str
    kl_docs: torch.Tensor
    """[n, t] token ids of corpus documents on which a change's KL is measured (teacher-forced)."""
    lm_rows: torch.Tensor
    """[n, t] token ids the reward-free fine-tunes train on (train split)."""
    positive_ids: list[int]
    """Whole-word tokens of 3+ letters with a VADER utility >= STRONG (the planted changes aim at them)."""
    candidate_ids: list[int]
    """Every whole-word token (the planted direction is aimed against their mean)."""
    positive_rows: torch.Tensor | None = None
    """[n, t] token ids of the train reviews with the most strongly positive VADER words (planted fine-tunes)."""


def build_world(corpus: str, out_dir, layers: int = 3, width: int = 64, vocab: int = 2000, steps: int = 200,
                seed: int = 0) -> World:
    """A tiny GPT-NeoX with a BPE tokenizer trained on `corpus`'s train split, pretrained `steps` LM steps."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff.output import vocabulary
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, load_model, save_model
    from rlhf_lens.rewards import load_utility_table

    data = load_corpus(corpus)
    if (Path(out_dir) / "config.json").is_file():  # built before by the same command (--keep): reuse it
        model, tok = load_model(str(out_dir))
        model_dir = str(out_dir)
    else:
        model, tok = build_tiny_model(data.texts("train"), TinyModelConfig(
            layers=layers, width=width, heads=4, vocab_size=vocab, pretrain_steps=steps, seed=seed))
        model_dir = str(save_model(model, tok, out_dir))
    model.eval()
    words = vocabulary(tok, model.get_output_embeddings().weight.shape[0])
    table = load_utility_table("vader")
    # 3+ letters: a one- or two-letter piece (" l") is usually the start of a longer word, not the word
    positive = [int(i) for i, w in zip(words.ids, words.words) if table.get(w, 0.0) >= STRONG and len(w) >= 3]
    kl_docs = _rows(tok, data.texts("test", 16, seed=seed + 1), 48)
    lm_rows = _rows(tok, data.texts("train", 256, seed=seed + 2), 48)
    from rlhf_lens.rewards import words as split_words

    train = data.texts("train")
    strong = [sum(table.get(w, 0.0) >= STRONG for w in split_words(t.lower())) for t in train]
    best = [train[i] for i in np.argsort(strong, kind="stable")[::-1][:256]]
    return World(corpus, model, tok, model_dir, kl_docs, lm_rows, positive, [int(i) for i in words.ids],
                 _rows(tok, best, 48))


def _rows(tok, texts: list[str], length: int) -> torch.Tensor:
    ids = [x[:length] for x in tok(texts)["input_ids"] if len(x) >= length]
    return torch.tensor(ids, dtype=torch.long)


@torch.inference_mode()
def kl_per_token(base: torch.nn.Module, tuned: torch.nn.Module, rows: torch.Tensor) -> float:
    """Mean over positions of KL(tuned || base) of the next-token distribution, teacher-forced on `rows`."""
    lp_b = torch.log_softmax(base(input_ids=rows).logits.float(), -1)
    lp_t = torch.log_softmax(tuned(input_ids=rows).logits.float(), -1)
    return float((lp_t.exp() * (lp_t - lp_b)).sum(-1).mean())


def _mlp_bias(model: torch.nn.Module, layer: int) -> torch.Tensor:
    from rlhf_lens.models import mlp_module

    return mlp_module(model, layer).dense_4h_to_h.bias


def _sized(make, base: torch.nn.Module, rows: torch.Tensor, target: float, hi: float, steps: int = 14):
    """make(scale) -> model; the scale in (0, hi] whose KL to base on `rows` is closest to `target` (bisection: KL
    grows with the scale of these changes)."""
    lo, best = 0.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = make(mid)
        kl = kl_per_token(base, model, rows)
        if best is None or abs(kl - target) < abs(best[1] - target):
            best = (model, kl, mid)
        lo, hi = (mid, hi) if kl < target else (lo, mid)
    return best


def planted_direction(world: World, words: list[int], layer: int) -> torch.Tensor:
    """A unit vector which, added to block `layer`'s output, raises the probability of `words` most per unit norm:
    the gradient of the mean over corpus positions of log(sum of the words' probabilities) with respect to a
    vector added there (through the later blocks, the final norm and the unembedding, as the model reads it)."""
    from rlhf_lens.diff.steering import Steer

    model = world.base
    v = torch.zeros(1, model.config.hidden_size, requires_grad=True)
    with Steer(model, {layer: v}):
        logp = torch.log_softmax(model(input_ids=world.kl_docs).logits.float(), -1)
    torch.logsumexp(logp[..., words], -1).mean().backward()
    g = v.grad[0].detach()
    return g / g.norm()


@dataclass
class Case:
    kind: str
    """direction, finetune, noise (null) or planted, planted_finetune."""
    seed: int
    layer: int | None
    """Block changed (None: every block)."""
    model: torch.nn.Module
    kl: float
    """KL(tuned || base) per token on corpus text (teacher-forced)."""
    scale: float
    words: list[int] | None = None

    @property
    def null(self) -> bool:
        return self.kind not in PLANTED_KINDS


def make_case(world: World, kind: str, seed: int) -> Case:
    """One seeded tuned model of `kind`, sized to a KL drawn from KL_RANGE."""
    from rlhf_lens.models import num_blocks

    rng = np.random.default_rng([seed, 0xCA1])
    target = float(rng.uniform(*KL_RANGE))
    base, rows = world.base, world.kl_docs
    n_blocks = num_blocks(base)
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    layer = None
    words = None
    if kind in ("direction", "planted"):
        # Not the last block: there Δ would be the constant vector itself, with nothing for a diff-SAE to find.
        layer = int(rng.integers(0, max(1, n_blocks - 1)))
        if kind == "planted":
            pick = rng.choice(len(world.positive_ids), min(8, len(world.positive_ids)), replace=False)
            words = [world.positive_ids[int(j)] for j in pick]
            unit = planted_direction(world, words, layer)
        else:
            unit = torch.randn(base.config.hidden_size, generator=gen)
            unit = unit / unit.norm()

        def make(scale: float):
            model = copy.deepcopy(base)
            with torch.no_grad():
                _mlp_bias(model, layer).add_(scale * unit)
            return model

        model, kl, scale = _sized(make, base, rows, target, hi=200.0)
    elif kind == "noise":
        noise = {name: torch.randn(p.shape, generator=gen) * (p.detach().std() if p.numel() > 1 else 0.0)
                 for name, p in base.named_parameters()}

        def make(scale: float):
            model = copy.deepcopy(base)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.add_(scale * noise[name])
            return model

        model, kl, scale = _sized(make, base, rows, target, hi=2.0)
    elif kind == "finetune":
        model, kl, scale = _finetune(world, target, gen)
    elif kind == "planted_finetune":  # a crude reward-driven tune: LM steps on the reviews richest in positive words
        model, kl, scale = _finetune(world, target, gen, rows=world.positive_rows)
    else:
        raise ValueError(f"unknown case kind {kind!r}")
    return Case(kind, seed, layer, model.eval(), kl, scale, words)


FINETUNE_MAX_STEPS = 200
"""LM steps a reward-free fine-tune takes at most to reach its target KL."""


def _finetune(world: World, target: float, gen: torch.Generator, lr: float = 1e-3, rows: torch.Tensor | None = None):
    """LM steps on seeded batches of train text (`rows`, default every train row) until the KL to base reaches
    `target` (or FINETUNE_MAX_STEPS)."""
    rows_from = world.lm_rows if rows is None else rows
    max_steps = FINETUNE_MAX_STEPS
    model = copy.deepcopy(world.base).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    kl, step = 0.0, 0
    while kl < target and step < max_steps:
        rows = rows_from[torch.randint(0, len(rows_from), (8,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 2 == 0:
            model.eval()
            kl = kl_per_token(world.base, model, world.kl_docs)
            model.train()
    return model.eval(), kl, float(step)


def case_plan(n_null: int, n_planted: int, seed: int) -> list[tuple[str, int]]:
    """(kind, seed) of every case, each seed distinct: the null kinds in turn, with the planted cases spread evenly
    among them (a run stopped early, or one shard of it, still holds both)."""
    nulls = [(NULL_KINDS[i % len(NULL_KINDS)], seed * 100_003 + i) for i in range(n_null)]
    planted = [(PLANTED_KINDS[i % len(PLANTED_KINDS)], seed * 100_003 + 50_000 + i) for i in range(n_planted)]
    total = n_null + n_planted
    # case k is planted when the planted count due by then, round((k + 1) * n_planted / total), goes up
    plan, used = [], 0
    for k in range(total):
        due = round((k + 1) * n_planted / total) if total else 0
        if due > used and used < len(planted):
            plan.append(planted[used])
            used += 1
        else:
            plan.append(nulls[k - used])
    return plan
