"""PPO (the RLHF stage): fine-tune a causal LM against a reward, with TRL 0.7's (2023) semantics.

One PPO step: sample `batch_size` prompts (train split) and responses of 8..19 tokens; score
prompt + response with the reward; per-token reward = -beta * (logp - logp_ref), plus the score
at the last response token; GAE (gamma, lambda) on a value head's estimates; whitened
advantages; `ppo_epochs` passes over shuffled minibatches with the clipped policy loss and the
clipped value loss; then the adaptive KL controller updates beta. docs/rlhf.md says exactly
what follows TRL 0.7 and what differs. The math functions are small and pure (tests hit them).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError, first_line, interrupt_point
from ..io import read_json, write_json, write_text
from ..rewards import scored_texts
from .config import PPOConfig, check_config

FORMAT = "rlhf-lens.ppo"
VERSION = 1
RESUME_IGNORES = ("checkpoint_every",)  # settings that may change between a run and its resume


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


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the smallest set holding top_p of the mass."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        probs = ordered.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return logits


class ValueHead(nn.Module):
    """Dropout + linear on the LM's last hidden state (float32 whatever the LM's dtype)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(hidden.float())).squeeze(-1)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def _kwarg_names(lm) -> set[str]:
    import inspect

    return set(inspect.signature(lm.forward).parameters)


def response_forward(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                     hidden: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (if `hidden`) last hidden states at the positions that predict the last `n_response` tokens."""
    kwargs = {}
    if "logits_to_keep" in _kwarg_names(lm):  # skip the LM head on prompt positions
        kwargs["logits_to_keep"] = n_response + 1
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
             use_cache=False, output_hidden_states=hidden, **kwargs)
    window = slice(-(n_response + 1), -1)
    return out.logits[:, window], (out.hidden_states[-1][:, window] if hidden else None)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class Rollouts:
    """Left-padded prompts followed by sampled responses (right-padded)."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]: 0 on prompt padding and after a response's end
    mask: torch.Tensor  # [B, T] float: 1.0 on response tokens
    logprobs: torch.Tensor  # [B, T]: log-probability of each sampled token under the sampling policy
    values: torch.Tensor | None  # [B, T]: value head at the position that chose each token
    prompt_len: int
    logits: torch.Tensor | None = None  # [B, T, V]: the sampling logits, kept for kl_penalty "full"

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]


@torch.no_grad()
def sample(lm, prompts: list[list[int]], lengths: list[int], eos_id: int | None, generator: torch.Generator,
           top_k: int = 0, top_p: float = 1.0, value_head: ValueHead | None = None,
           keep_logits: bool = False) -> Rollouts:
    """Sample one response per prompt, reusing the KV cache. A response ends after `lengths[i]`
    tokens or at its first EOS (kept as its last token); tokens sampled after that are masked."""
    device = next(lm.parameters()).device
    batch, width, steps = len(prompts), max(len(p) for p in prompts), max(lengths)
    ids = torch.zeros(batch, width, dtype=torch.long, device=device)
    attention = torch.zeros(batch, width, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        attention[i, width - len(p):] = 1
    cache_arg = "cache" if "cache" in _kwarg_names(lm) else "past_key_values"  # renamed in transformers 5.x
    out = lm(input_ids=ids, attention_mask=attention, position_ids=_positions(attention), use_cache=True,
             output_hidden_states=value_head is not None)
    position = _positions(attention)[:, -1:]
    limit = torch.tensor(lengths, device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    tokens, logprobs, values, masks, kept = [], [], [], [], []
    for t in range(steps):
        logits = out.logits[:, -1].float()
        if keep_logits:
            kept.append(logits)
        if value_head is not None:
            values.append(value_head(out.hidden_states[-1][:, -1]))
        probs = filter_logits(logits, top_k, top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator)
        alive = alive & (t < limit)
        masks.append(alive.clone())
        tokens.append(token)
        logprobs.append(token_logprobs(logits, token[:, 0]))
        if eos_id is not None:
            alive = alive & (token[:, 0] != eos_id)
        if t + 1 == steps:
            break
        attention = torch.cat([attention, torch.ones(batch, 1, dtype=torch.long, device=device)], 1)
        position = position + 1
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        out = lm(input_ids=token, attention_mask=attention, position_ids=position, use_cache=True,
                 output_hidden_states=value_head is not None, **{cache_arg: cache})
    mask = torch.stack(masks, 1)
    return Rollouts(
        input_ids=torch.cat([ids, torch.cat(tokens, 1)], 1),
        attention_mask=torch.cat([attention[:, :width], mask.long()], 1),
        mask=mask.float(), logprobs=torch.stack(logprobs, 1),
        values=torch.stack(values, 1) if values else None, prompt_len=width,
        logits=torch.stack(kept, 1) if kept else None,
    )


def decode_rollouts(tokenizer, prompts: list[list[int]], rollouts: Rollouts) -> tuple[list[str], list[str]]:
    """Prompt texts and response texts (special tokens such as EOS dropped)."""
    lengths = rollouts.mask.sum(1).long().tolist()
    queries = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    responses = tokenizer.batch_decode([r[:n] for r, n in zip(rollouts.responses.tolist(), lengths)],
                                       skip_special_tokens=True)
    return queries, responses


def _score(reward, queries: list[str], responses: list[str], score_query: bool) -> list[float]:
    texts = scored_texts(queries, responses, score_query)
    scores = [float(s) for s in reward(texts)]
    if len(scores) != len(texts) or not all(math.isfinite(s) for s in scores):
        raise UserError("the reward returned a wrong number of scores or a non-finite score; check the reward")
    return scores


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from (run seed, step, stream): each step's draws are independent of the others."""
    low, high = np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & (2**63 - 1)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def evaluate_reward(model, tokenizer, reward, prompts: list[list[int]], config: PPOConfig) -> dict:
    """Mean reward (with standard error) and fraction positive of completions of `prompts`.

    Response lengths and sampling are seeded by config.seed alone, so two models evaluated with
    the same prompts and config get the same lengths and random streams.
    """
    device = next(model.parameters()).device
    rng = np.random.RandomState(_seed(config.seed, 2**30) % 2**32)
    lengths = rng.randint(config.min_new_tokens, config.max_new_tokens + 1, size=len(prompts)).tolist()
    generator = _generator(device, _seed(config.seed, 2**30 + 1))
    eos = tokenizer.eos_token_id
    scores: list[float] = []
    completions = []
    for start in range(0, len(prompts), config.batch_size):
        batch = [p or [eos] for p in prompts[start:start + config.batch_size]]
        rollouts = sample(model, batch, lengths[start:start + config.batch_size], eos, generator, config.top_k,
                          config.top_p)
        queries, responses = decode_rollouts(tokenizer, batch, rollouts)
        batch_scores = _score(reward, queries, responses, config.score_query)
        scores += batch_scores
        completions += [{"prompt": q, "response": r, "reward": s} for q, r, s in zip(queries, responses, batch_scores)]
    values = np.array(scores)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "se": se, "positive_frac": float((values > 0).mean()), "n": len(values),
            "completions": completions}


class _Trainer:
    """State of one PPO run: policy, value head, reference, optimizer, KL controller, step, log."""

    def __init__(self, policy, reference, tokenizer, reward, corpus, config: PPOConfig):
        self.policy, self.reference, self.tokenizer, self.reward = policy, reference, tokenizer, reward
        self.corpus, self.config = corpus, config
        self.device = next(policy.parameters()).device
        torch.manual_seed(_seed(config.seed, 2**30 + 2))
        self.value_head = ValueHead(policy.config.hidden_size, config.value_dropout).to(self.device)
        if config.value_init == "zero":
            # An untrained head's values differ from token to token, and GAE turns those
            # differences into advantage noise as large as the reward signal on a small model.
            nn.init.zeros_(self.value_head.linear.weight)
            nn.init.zeros_(self.value_head.linear.bias)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.kl = KLController(config.init_kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl)
        self.step = 0
        self.log: list[dict] = []

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def train_step(self) -> dict:
        """One PPO step: rollouts, scores, advantages, ppo_epochs of minibatch updates, KL update."""
        c, step = self.config, self.step
        started = time.perf_counter()
        torch.manual_seed(_seed(c.seed, step, 3))  # value-head dropout
        rng = np.random.RandomState(_seed(c.seed, step, 1) % 2**32)
        from ..data import sample_prompts

        prompts = sample_prompts(self.corpus, self.tokenizer, c.batch_size, seed=_seed(c.seed, step, 0) % 2**32,
                                 split="train", min_chars=c.prompt_min_chars, min_tokens=c.prompt_min_tokens,
                                 max_tokens=c.prompt_max_tokens)
        prompts = [p or [self.tokenizer.eos_token_id] for p in prompts]
        lengths = rng.randint(c.min_new_tokens, c.max_new_tokens + 1, size=len(prompts)).tolist()
        self.policy.eval()
        r = sample(self.policy, prompts, lengths, self.tokenizer.eos_token_id,
                   _generator(self.device, _seed(c.seed, step, 2)), c.top_k, c.top_p, self.value_head.eval(),
                   keep_logits=c.kl_penalty == "full")
        rollout_s = time.perf_counter() - started
        queries, responses = decode_rollouts(self.tokenizer, prompts, r)
        scores = torch.tensor(_score(self.reward, queries, responses, c.score_query), device=self.device)
        tokens, n = r.responses, r.mask.shape[1]
        with torch.no_grad():
            ref_logprobs, full = [], []
            for i in range(0, len(prompts), c.mini_batch_size):
                part = slice(i, i + c.mini_batch_size)
                ref_logits = response_forward(self.reference, r.input_ids[part], r.attention_mask[part], n,
                                              hidden=False)[0]
                ref_logprobs.append(token_logprobs(ref_logits, tokens[part]))
                if r.logits is not None:
                    full.append(full_kl(r.logits[part], ref_logits))
            rewards, kl = kl_rewards(scores, r.logprobs, torch.cat(ref_logprobs), r.mask, self.kl.value,
                                     kl=torch.cat(full) if full else None)
            r.logits = None  # [B, T, V]: needed only for the KL; free it before the updates
            advantages, returns = gae(r.values, rewards, r.mask, c.gamma, c.lam)
            advantages = whiten(advantages, r.mask)
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * lr_factor(step, c.warmup_steps, c.steps, c.lr_schedule)
        stats = self._optimise(r, tokens, advantages, returns, rng)
        mean_kl = float(kl.sum(1).mean())
        row = {"step": step + 1, "reward": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
               "kl": mean_kl, "beta": self.kl.value, **stats, "lr": self.optimizer.param_groups[0]["lr"],
               "response_tokens": float(r.mask.sum(1).mean()), "rollout_s": round(rollout_s, 4),
               "step_s": round(time.perf_counter() - started, 4)}
        self.kl.update(mean_kl, len(prompts))
        self.step += 1
        self.log.append(row)
        return row

    def _optimise(self, r: Rollouts, tokens, advantages, returns, rng: np.random.RandomState) -> dict:
        c = self.config
        self.value_head.train()
        totals: dict[str, float] = {}
        count = skipped = 0
        for _ in range(c.ppo_epochs):
            order = torch.from_numpy(rng.permutation(len(tokens))).to(self.device)
            for start in range(0, len(order), c.mini_batch_size):
                idx = order[start:start + c.mini_batch_size]
                logits, hidden = response_forward(self.policy, r.input_ids[idx], r.attention_mask[idx], tokens.shape[1])
                log_probs = torch.log_softmax(logits.float(), -1)  # reused for the entropy below
                logprobs = log_probs.gather(-1, tokens[idx].unsqueeze(-1)).squeeze(-1)
                loss, stats = ppo_loss(logprobs, self.value_head(hidden), r.logprobs[idx], r.values[idx],
                                       advantages[idx], returns[idx], r.mask[idx], c.cliprange, c.cliprange_value,
                                       c.vf_coef)
                if stats["ratio"] > c.ratio_threshold:  # TRL: skip a minibatch whose ratio exploded
                    skipped += 1
                    loss = loss * 0.0
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.parameters(), c.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    stats["entropy"] = masked_mean(-(log_probs.exp() * log_probs).sum(-1), r.mask[idx])
                stats["loss"] = loss.detach()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
                count += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {**{k: v / count for k, v in totals.items()}, "skipped_minibatches": skipped}

    # --- checkpoints: out/checkpoint/{policy,value_head}.safetensors, optimizer.pt, state.json ---

    def save_checkpoint(self, folder: Path) -> None:
        """Write into a fresh folder, then swap it in (the old one survives a crash as checkpoint.old)."""
        import tempfile

        from safetensors.torch import save_file, save_model

        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            save_model(self.policy, str(staging / "policy.safetensors"))
            save_file(self.value_head.state_dict(), str(staging / "value_head.safetensors"))
            torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
            (staging / "state.json").write_text(json.dumps({"step": self.step, "kl_coef": self.kl.value}) + "\n")
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.replace(folder, old)
            os.replace(staging, folder)
            if old.exists():
                shutil.rmtree(old)
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def load_checkpoint(self, folder: Path, log: list[dict]) -> None:
        from safetensors.torch import load_file, load_model

        try:
            state = json.loads((folder / "state.json").read_text())
            load_model(self.policy, str(folder / "policy.safetensors"), device=str(self.device))
            self.value_head.load_state_dict(load_file(str(folder / "value_head.safetensors"), device=str(self.device)))
            self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device,
                                                      weights_only=True))
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as e:
            raise UserError(f"{folder}: damaged checkpoint ({first_line(e)}); "
                            "delete the folder to restart the run") from None
        self.step, self.kl.value = int(state["step"]), float(state["kl_coef"])
        self.log = [row for row in log if row["step"] <= self.step]


def _run_record(base: str, reward_spec: str, corpus: str, config: PPOConfig) -> dict:
    return {"format": FORMAT, "version": VERSION, "base": base, "reward": reward_spec, "corpus": corpus,
            "config": dataclasses.asdict(config)}


def _check_out_dir(out: Path, record: dict) -> bool:
    """True when `out` holds this run (to resume); False when it is new; UserError when it is another."""
    path = out / "config.json"
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not an rlhf-lens PPO folder; use another --out")
        return False
    old = read_json(path)
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise UserError(f"{path} is not an rlhf-lens PPO config; use another --out")
    flat_old = {**{k: v for k, v in old.items() if k != "config"}, **old.get("config", {})}
    flat_new = {**{k: v for k, v in record.items() if k != "config"}, **record["config"]}
    diff = [f"{k}: {flat_old.get(k)!r} -> {v!r}" for k, v in flat_new.items()
            if k not in RESUME_IGNORES and flat_old.get(k) != v]
    if diff:
        raise UserError(f"{out} holds a PPO run with other settings ({'; '.join(diff[:3])}); "
                        "use another --out or delete that folder")
    return True


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only a torn last line can be bad (writes are atomic): keep what came before
    return rows


def train_ppo(base: str, reward_spec: str, corpus: str, out: str | os.PathLike, config: PPOConfig | None = None) -> Path:
    """Fine-tune `base` with PPO against the reward on `corpus`'s prompts; resumable. Returns out/model.

    Writes out/config.json, out/log.jsonl (one JSON object per step), out/checkpoint/ (while
    running), out/model/ (save_pretrained, without the value head), out/eval.json, out/ppo.png.
    """
    from ..data import load_corpus, sample_prompts
    from ..models import load_model, save_model
    from ..progress import progress_bar
    from ..rewards import load_reward

    config = config or PPOConfig()
    out = Path(out)
    check_config(config)
    record = _run_record(base, reward_spec, corpus, config)
    resuming = _check_out_dir(out, record)
    if resuming and (out / "eval.json").is_file() and (out / "model").is_dir():
        return out / "model"  # finished earlier
    reward = load_reward(reward_spec, device=config.device)
    data = load_corpus(corpus, text_column=config.text_column)
    policy, tokenizer = load_model(base, device=config.device, dtype=config.dtype)
    eval_prompts = sample_prompts(data, tokenizer, config.eval_prompts, seed=config.seed, split="test",
                                  min_chars=config.prompt_min_chars, min_tokens=config.prompt_min_tokens,
                                  max_tokens=config.prompt_max_tokens)
    sample_prompts(data, tokenizer, 1, split="train", min_chars=config.prompt_min_chars)  # fail before writing
    reference = copy.deepcopy(policy).requires_grad_(False).eval()  # frozen copy of the base
    write_json(out / "config.json", record)

    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        trainer = _Trainer(policy, reference, tokenizer, reward, data, config)
        checkpoint = out / "checkpoint"
        if not checkpoint.is_dir() and (out / "checkpoint.old").is_dir():  # a crash mid-swap
            os.replace(out / "checkpoint.old", checkpoint)
        if checkpoint.is_dir():
            trainer.load_checkpoint(checkpoint, _read_log(out / "log.jsonl"))
        with progress_bar() as bar:
            task = bar.add_task("ppo", total=config.steps, completed=trainer.step)
            while trainer.step < config.steps:
                row = trainer.train_step()
                write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.log))
                if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                    trainer.save_checkpoint(checkpoint)
                bar.update(task, advance=1, description=f"ppo reward {row['reward']:+.3f} kl {row['kl']:.2f}")
                interrupt_point("rlhf", trainer.step)
        model_dir = save_model(policy.eval(), tokenizer, out / "model")
        base_eval = evaluate_reward(reference, tokenizer, reward, eval_prompts, config)
        tuned_eval = evaluate_reward(policy, tokenizer, reward, eval_prompts, config)
    plot_log(trainer.log, out / "ppo.png", kl_target=config.kl_target if config.adaptive_kl else None)
    _write_eval(out, reward_spec, reward, base_eval, tuned_eval, config,
                final_kl=trainer.log[-1]["kl"] if trainer.log else None)
    shutil.rmtree(checkpoint, ignore_errors=True)  # model/ and eval.json now hold the result
    return model_dir


def _write_eval(out: Path, reward_spec: str, reward, base_eval: dict, tuned_eval: dict, config: PPOConfig,
                final_kl: float | None, tuned_by: str = "ppo") -> None:
    """out/eval.json: held-out reward of base and tuned on the same prompts and random streams."""
    examples = [{"prompt": b["prompt"], "base": b["response"], "base_reward": b["reward"],
                 "tuned": t["response"], "tuned_reward": t["reward"]}
                for b, t in zip(base_eval["completions"][:config.eval_examples],
                                tuned_eval["completions"][:config.eval_examples])]
    write_json(out / "eval.json", {
        "reward": reward_spec, "reward_info": getattr(reward, "info", {}), "split": "test", "n": base_eval["n"],
        "base": {k: base_eval[k] for k in ("mean", "se", "positive_frac")},
        "tuned": {k: tuned_eval[k] for k in ("mean", "se", "positive_frac")},
        "final_kl": final_kl, "steps": config.steps if tuned_by == "ppo" else 0, "tuned_by": tuned_by,
        "examples": examples})


def evaluate_models(base: str, tuned: str, reward_spec: str, corpus: str, out: str | os.PathLike,
                    config: PPOConfig | None = None) -> dict:
    """Held-out reward of `base` and a model tuned elsewhere (OpenRLHF, TRL, ...), on the same prompts and random
    streams as after a PPO run of ours; writes out/eval.json (tuned_by: "external") and returns it. No training."""
    from ..data import load_corpus, sample_prompts
    from ..models import load_model
    from ..rewards import load_reward

    config = config or PPOConfig()
    out = Path(out)
    reward = load_reward(reward_spec, device=config.device)
    data = load_corpus(corpus, text_column=config.text_column)
    base_model, tokenizer = load_model(base, device=config.device, dtype=config.dtype)
    prompts = sample_prompts(data, tokenizer, config.eval_prompts, seed=config.seed, split="test",
                             min_chars=config.prompt_min_chars, min_tokens=config.prompt_min_tokens,
                             max_tokens=config.prompt_max_tokens)
    with torch.random.fork_rng(devices=[base_model.device] if base_model.device.type == "cuda" else []):
        base_eval = evaluate_reward(base_model.eval(), tokenizer, reward, prompts, config)
        del base_model
        tuned_model, _ = load_model(tuned, device=config.device, dtype=config.dtype)
        tuned_eval = evaluate_reward(tuned_model.eval(), tokenizer, reward, prompts, config)
    _write_eval(out, reward_spec, reward, base_eval, tuned_eval, config, final_kl=None, tuned_by="external")
    return read_json(out / "eval.json")


def plot_log(log: list[dict], path: Path, kl_target: float | None = None) -> None:
    """Reward, KL, beta and the losses against the step, as a 2x2 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    steps = [row["step"] for row in log]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    reward = np.array([row["reward"] for row in log])
    spread = np.array([row["reward_std"] for row in log])
    axes[0, 0].plot(steps, reward, color="C0")
    axes[0, 0].fill_between(steps, reward - spread, reward + spread, color="C0", alpha=0.2)
    axes[0, 0].set_title("reward (mean ± std over the batch)")
    axes[0, 1].plot(steps, [row["kl"] for row in log], color="C1")
    if kl_target is not None:
        axes[0, 1].axhline(kl_target, color="grey", linestyle="--", label="target")
        axes[0, 1].legend()
    axes[0, 1].set_title("KL to the reference (nats per response)")
    axes[1, 0].plot(steps, [row["beta"] for row in log], color="C2")
    axes[1, 0].set_title("KL coefficient beta")
    axes[1, 1].plot(steps, [row["policy_loss"] for row in log], label="policy")
    axes[1, 1].plot(steps, [row["value_loss"] for row in log], label="value")
    axes[1, 1].legend()
    axes[1, 1].set_title("losses")
    for ax in axes[1]:
        ax.set_xlabel("PPO step")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
