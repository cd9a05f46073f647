"""PPO settings on the demo's task: how fast the training reward rises, per setting.

Runs the first N steps of the demo preset's [rlhf] settings (SmolLM2-135M, Pang & Lee prompts,
VADER) with JSON overrides, and prints the reward, KL and entropy of every step, then the mean
training reward over the first and the last 10 steps. The lr schedule stays the preset's (its
`steps` sets the decay), so a 30-step trial is the first half of a 60-step run, as in the table
of docs/rlhf.md. Each trial takes ~3 minutes on 2 idle CPU cores; one seed per trial, so
differences under ~0.1 are noise.

Usage: python bench/ppo_trials.py NAME '{"init_kl_coef": 0.2, "kl_penalty": "full"}' [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time

os.environ.setdefault("RLHF_LENS_QUIET", "1")

from rlhf_lens.config import load_config  # noqa: E402
from rlhf_lens.data import load_corpus  # noqa: E402
from rlhf_lens.models import load_model  # noqa: E402
from rlhf_lens.rewards import load_reward  # noqa: E402
from rlhf_lens.rlhf import _Trainer, check_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a label for the printed lines")
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON object of PPOConfig fields")
    parser.add_argument("--steps", type=int, default=30, help="PPO steps to run (of the preset's schedule)")
    args = parser.parse_args()

    demo = load_config(preset="demo")
    config = dataclasses.replace(demo.rlhf, **json.loads(args.overrides))
    check_config(config)
    reward, corpus = load_reward(demo.reward.spec), load_corpus(demo.data.corpus)
    policy, tokenizer = load_model(demo.model.base)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    # The trainer train_ppo drives, stepped here by hand so a trial can stop halfway through a schedule.
    trainer = _Trainer(policy, reference, tokenizer, reward, corpus, config)
    started, rows = time.perf_counter(), []
    while trainer.step < args.steps:
        row = trainer.train_step()
        rows.append(row)
        print(f"{args.name} step {row['step']:3d} reward {row['reward']:+.3f} kl {row['kl']:.2f} "
              f"entropy {row['entropy']:.2f} value_loss {row['value_loss']:.3f} "
              f"{time.perf_counter() - started:.0f}s", flush=True)
    first, last = rows[:10], rows[-10:]
    print(f"{args.name}: mean training reward, steps 1-{len(first)}: "
          f"{sum(r['reward'] for r in first) / len(first):+.3f}; last {len(last)} steps: "
          f"{sum(r['reward'] for r in last) / len(last):+.3f}; KL at the last step {rows[-1]['kl']:.2f}")


if __name__ == "__main__":
    main()
