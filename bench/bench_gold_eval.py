#!/usr/bin/env python3
"""The cost of the evaluations along a tune (`rlhf.eval_every`), beside the PPO step they interrupt.

Runs `train_ppo` with the demo preset's [rlhf] settings for a few steps with eval_every = 1 and a gold, and reads
`step_s` from log.jsonl and `eval_s` from evals.jsonl: one evaluation samples `eval_prompts` held-out completions,
scores them by the reward and the gold, and runs the reference over them for the KL. The first PPO step is a
warm-up and is left out of the step's median.

Usage: python bench/bench_gold_eval.py [--model smollm2] [--steps 3] [--eval-prompts 64] [--gold sentiment]
       [--threads 2]
Prints INFO lines, then FIGURE lines: eval_s, step_s, and the share of a run's time the evaluations take at a
few eval_every. Timings on a shared machine are noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--corpus", default="pang-lee")
    p.add_argument("--reward", default="vader")
    p.add_argument("--gold", default="sentiment")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlhf_lens.config import load_config
    from rlhf_lens.rlhf import train_ppo

    config = load_config(preset="demo").rlhf
    config.steps, config.eval_every, config.eval_prompts = args.steps, 1, args.eval_prompts
    print(f"INFO model {args.model}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}, "
          f"batch_size {config.batch_size}, eval_prompts {config.eval_prompts}, gold {args.gold}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ppo"
        train_ppo(args.model, args.reward, args.corpus, out, config, gold=args.gold)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        evals = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["step_s"] for r in log[1:] or log)
    eval_s = statistics.median(r["eval_s"] for r in evals)
    print(f"INFO eval_s per evaluation: {[r['eval_s'] for r in evals]}; step_s: {[r['step_s'] for r in log]}")
    print(f"INFO load average after: {os.getloadavg()[0]:.1f}")
    print(f"FIGURE eval_s={eval_s:.2f} s ({config.eval_prompts} prompts, reward + gold + reference KL)")
    print(f"FIGURE step_s={step_s:.2f} s (PPO step, batch {config.batch_size})")
    for every in (5, 10, 20):
        print(f"FIGURE eval_every={every}: evaluations add {100 * eval_s / (every * step_s):.0f}% to the PPO time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
