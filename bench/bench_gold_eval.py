#!/usr/bin/env python3
"""The cost of one evaluation along a tune (`rlhf.eval_every`), beside the PPO step it interrupts.

Loads the model, the reward and the gold as `train_ppo` does, with the demo preset's [rlhf] settings, then times one
held-out evaluation (`evals.evaluate_reward` with the gold and the reference: sampling `eval_prompts` completions,
the reward, the gold, the reference's forward for the KL; each part timed) and one PPO step (`_Trainer.train_step`,
after one warm-up step when --steps > 1).

Usage: python bench/bench_gold_eval.py [--model smollm2] [--eval-prompts 64] [--gold sentiment] [--threads 2]
Prints INFO lines, then FIGURE lines: eval_s (and its parts), step_s, and the share of a run's time the evaluations
take at a few eval_every. Timings on a shared machine are noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--corpus", default="pang-lee")
    p.add_argument("--reward", default="vader")
    p.add_argument("--gold", default="sentiment")
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--steps", type=int, default=1, help="PPO steps timed (the first is a warm-up when > 1)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import copy

    import torch

    torch.set_num_threads(args.threads)
    from rlhf_lens.config import load_config
    from rlhf_lens.data import load_corpus
    from rlhf_lens.models import load_model
    from rlhf_lens.rewards import load_reward
    from rlhf_lens.rlhf import evals
    from rlhf_lens.rlhf.run import heldout_eval_prompts
    from rlhf_lens.rlhf.trainer import _Trainer

    config = load_config(preset="demo").rlhf
    config.eval_prompts = args.eval_prompts
    spent = {"reward": 0.0, "gold": 0.0, "kl": 0.0}

    def timed(name, fn):
        def call(*a, **k):
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - started
        return call

    reward, gold = load_reward(args.reward), load_reward(args.gold)
    data = load_corpus(args.corpus)
    policy, tokenizer = load_model(args.model)
    prompts = heldout_eval_prompts(data, tokenizer, config)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    print(f"INFO model {args.model}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}, "
          f"batch_size {config.batch_size}, eval_prompts {len(prompts)}, reward {args.reward}, gold {args.gold}",
          flush=True)
    evals._response_kl = timed("kl", evals._response_kl)
    started = time.perf_counter()
    result = evals.evaluate_reward(policy.eval(), tokenizer, timed("reward", reward), prompts, config,
                                   gold=timed("gold", gold), reference=reference)
    eval_s = time.perf_counter() - started
    print(f"INFO evaluation: proxy {result['mean']:+.3f}, {len(result['completions'])} completions", flush=True)
    trainer = _Trainer(policy, reference, tokenizer, reward, data, config)
    steps = [trainer.train_step()["step_s"] for _ in range(args.steps)]
    step_s = statistics.median(steps[1:] or steps)
    print(f"INFO step_s per step: {steps}; load average after: {os.getloadavg()[0]:.1f}")
    sampling = eval_s - sum(spent.values())
    print(f"FIGURE eval_s={eval_s:.1f} s ({len(prompts)} prompts; sampling {sampling:.1f}, reward {spent['reward']:.2f}, "
          f"gold {spent['gold']:.2f}, reference KL {spent['kl']:.1f})")
    print(f"FIGURE step_s={step_s:.1f} s (PPO step, batch {config.batch_size})")
    for every in (5, 10, 20):
        print(f"FIGURE eval_every={every}: evaluations add {100 * eval_s / (every * step_s):.0f}% to the PPO time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
