"""The PPO trainer: one run's state (policy, value head, reference, optimizer, KL controller, step, log),
its PPO step, and its checkpoint (written atomically, loaded to resume).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError, first_line
from .config import PPOConfig
from .ppo import KLController, ValueHead, full_kl, gae, kl_rewards, lr_factor, masked_mean, ppo_loss, whiten
from .rollouts import Rollouts, _generator, _score, _seed, decode_rollouts, response_forward, sample, token_logprobs


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
