"""PPO settings (torch-free: the run config and the CLI read them without importing torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..rules import Namer, field_name, not_empty, number, one_of, require, seed

LR_SCHEDULES = ("constant", "linear")
VALUE_INITS = ("default", "zero")
KL_PENALTIES = ("kl", "full")


@dataclass
class PPOConfig:
    steps: int = 100
    """PPO steps; each samples batch_size rollouts and trains on them for ppo_epochs (0 in a run with model.tuned: no PPO)."""
    batch_size: int = 64
    """Rollouts (prompt + sampled response) per PPO step."""
    mini_batch_size: int = 16
    """Rollouts per optimizer step inside a PPO step."""
    ppo_epochs: int = 4
    """Passes over each batch of rollouts (shuffled into minibatches each pass)."""
    lr: float = 1e-6
    """Peak AdamW learning rate (the paper: 1e-6; a few-minute CPU demo needs ~3e-5)."""
    warmup_steps: int = 0
    """PPO steps of linear learning-rate warm-up, after which the lr follows lr_schedule (TRL 0.7: none)."""
    lr_schedule: str = "constant"
    """After warm-up: constant (stay at lr: TRL 0.7's PPOTrainer, which the paper ran, has no scheduler) or
    linear (decay towards 0 at the last step)."""
    weight_decay: float = 0.0
    """AdamW weight decay (0: TRL 0.7's default optimizer was plain Adam)."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm of each optimizer step to this."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around the rollout's value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    ratio_threshold: float = 10.0
    """Skip a minibatch (zero loss) when its mean policy ratio exceeds this (TRL's guard against spikes)."""
    value_dropout: float = 0.1
    """Dropout before the value head's linear layer (in training passes)."""
    value_init: str = "default"
    """Value head init: default (PyTorch's uniform, as TRL) or zero (its first values add no noise to the advantages)."""
    adaptive_kl: bool = True
    """Adapt the KL coefficient towards kl_target (Ziegler et al.); off: keep init_kl_coef."""
    init_kl_coef: float = 0.5
    """Initial KL coefficient beta of the per-token penalty -beta * KL (see kl_penalty)."""
    kl_penalty: str = "kl"
    """Per-token KL in the penalty: kl (logp - logp_ref of the sampled token, TRL's default) or full (exact KL of the two next-token distributions: same mean, far less noise)."""
    kl_target: float = 6.0
    """Target KL (nats per response, summed over its tokens) of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * batch_size / horizon."""
    min_new_tokens: int = 8
    """Shortest response (tokens); each rollout draws its length uniformly from min..max."""
    max_new_tokens: int = 19
    """Longest response (tokens), inclusive."""
    top_k: int = 0
    """Sample from the top-k tokens only (0: no limit, the paper's)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: the whole softmax, the paper's)."""
    score_query: bool = True
    """Score prompt + response with the reward (the paper's); false: the response alone."""
    prompt_min_chars: int = 200
    """Prompts come from documents longer than this many characters."""
    prompt_min_tokens: int = 2
    """Shortest prompt: a document's first N tokens, N drawn from min..max per prompt."""
    prompt_max_tokens: int = 9
    """Longest prompt in tokens, inclusive."""
    text_column: str = "text"
    """Text column of a file corpus."""
    eval_prompts: int = 64
    """Held-out prompts (test split) on which base and tuned model are compared in eval.json."""
    eval_every: int = 10
    """Every N PPO steps (and before the first): sample the held-out prompts and log the reward, the gold's reward
    (gold.spec), the KL to the base and the completions' repetition, the curve of proxy and gold against sqrt(KL);
    0: only the final evaluation."""
    eval_examples: int = 4
    """Example completions (base and tuned) written to eval.json."""
    checkpoint_every: int = 10
    """Write a resumable checkpoint every N steps (and after the last)."""
    seed: int = 0
    """Seed of prompts, response lengths, sampling, value-head init, dropout and shuffling."""
    device: str = "cpu"
    """Device for policy, reference and classifier reward: cpu or cuda."""
    dtype: str = "float32"
    """Dtype of policy and reference (float32 recommended for training)."""


def check_config(config: PPOConfig, key: Namer = field_name) -> None:
    """Every setting in range, or a UserError naming the first that is not (as `key` spells it): each field's own
    rule first, then the rules relating two fields (naming both)."""
    c, k = config, key
    require([
        (c.steps >= 1, f"{k('steps')} must be at least 1 (got {c.steps})"),
        number(c, "batch_size", k, at_least=1),
        number(c, "mini_batch_size", k, at_least=1),
        number(c, "ppo_epochs", k, at_least=1),
        number(c, "lr", k, above=0),
        number(c, "warmup_steps", k, at_least=0),
        one_of(c, "lr_schedule", k, LR_SCHEDULES),
        number(c, "weight_decay", k, at_least=0),
        number(c, "max_grad_norm", k, above=0),
        number(c, "gamma", k, above=0, at_most=1),
        number(c, "lam", k, at_least=0, at_most=1),
        number(c, "cliprange", k, above=0),
        number(c, "cliprange_value", k, above=0),
        number(c, "vf_coef", k, at_least=0),
        number(c, "ratio_threshold", k, above=1),
        number(c, "value_dropout", k, at_least=0, below=1),
        one_of(c, "value_init", k, VALUE_INITS),
        number(c, "init_kl_coef", k, at_least=0),
        one_of(c, "kl_penalty", k, KL_PENALTIES),
        number(c, "kl_target", k, above=0),
        number(c, "kl_horizon", k, at_least=1),
        number(c, "min_new_tokens", k, at_least=1),
        number(c, "max_new_tokens", k, at_least=1),
        number(c, "top_k", k, at_least=0, note="0: no limit"),
        number(c, "top_p", k, above=0, at_most=1),
        number(c, "prompt_min_chars", k, at_least=0),
        number(c, "prompt_min_tokens", k, at_least=1),
        number(c, "prompt_max_tokens", k, at_least=1),
        not_empty(c, "text_column", k, "the column holding the text, e.g. text"),
        number(c, "eval_prompts", k, at_least=1),
        number(c, "eval_every", k, at_least=0, note="0: only the final evaluation"),
        number(c, "eval_examples", k, at_least=0),
        number(c, "checkpoint_every", k, at_least=1),
        seed(c, "seed", k),
    ])
    check_device_dtype(c.device, c.dtype, key)
    require([
        (c.mini_batch_size <= c.batch_size,
         f"{k('mini_batch_size')} ({c.mini_batch_size}) must be at most {k('batch_size')} ({c.batch_size})"),
        (c.min_new_tokens <= c.max_new_tokens,
         f"{k('min_new_tokens')} ({c.min_new_tokens}) must be at most {k('max_new_tokens')} ({c.max_new_tokens})"),
        (c.prompt_min_tokens <= c.prompt_max_tokens,
         f"{k('prompt_min_tokens')} ({c.prompt_min_tokens}) must be at most {k('prompt_max_tokens')} "
         f"({c.prompt_max_tokens})"),
    ])


DTYPES = ("float32", "bfloat16", "float16")


def check_device_dtype(device: str, dtype: str, key: Namer = field_name) -> None:
    """Names only (torch-free): whether the device exists is checked when a model is loaded."""
    require([
        (dtype in DTYPES, f"{key('dtype')} must be one of {', '.join(DTYPES)} (got {dtype!r})"),
        (re.fullmatch(r"cpu|cuda(:\d+)?|mps", device) is not None,
         f"{key('device')} must be cpu, cuda, cuda:N or mps (got {device!r})"),
    ])
