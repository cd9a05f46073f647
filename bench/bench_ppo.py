"""PPO speed: rollout tokens/s and PPO steps/s, on a tiny GPT-NeoX and on SmolLM2-135M.

Runs `train_ppo` for a few steps and reads its log: `rollout_s` (sampling with the KV cache,
value head included) and `step_s` (the whole PPO step: rollout, reward, reference forward,
ppo_epochs of minibatch updates, KL update). The first step is a warm-up and is left out.

Target: a PPO step no slower than TRL 0.11.4's `PPOTrainer.step` on the same model and batch,
measured on 2 cores for 64 rollouts of 16 tokens on a 2-layer, width-64 GPT-NeoX:
~0.07 s to generate + ~0.33 s per step (TRL's step excludes generation). With --anchors, TRL's figures
are measured in the same run instead, by bench/anchor_trl_ppo.py on the same tiny model folder and corpus
(in the venv `make anchors` builds; docs/anchors.md).

Usage: python bench/bench_ppo.py [--small] [--models tiny,smollm2] [--steps N] [--threads N] [--anchors] [--json]
--small: the tiny model only, 4 steps. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anchor_venv import missing_line

os.environ.setdefault("RLHF_LENS_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRL_REFERENCE = {"generate_s": 0.07, "step_s": 0.33}
"""TRL 0.11.4 on the tiny setting, 2 cores; replaced by a measurement of the same run with --anchors."""
WORDS = ("the movie film plot actor was is a and story scene it this director of with to in ending music "
         "good great love wonderful excellent fun happy best bad terrible boring awful hate worst sad dull").split()


def write_corpus(path: Path, n_docs: int = 400, seed: int = 0) -> Path:
    """Synthetic reviews over 200 characters, 4 in 5 in the train split."""
    rng = np.random.RandomState(seed)
    with path.open("w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS, size=int(rng.randint(50, 120)))) + " ."
            f.write(json.dumps({"text": text, "split": "test" if i % 5 == 0 else "train"}) + "\n")
    return path


def tiny_model(folder: Path, corpus: Path) -> str:
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model

    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    model, tok = build_tiny_model(texts, TinyModelConfig(layers=2, width=64, heads=4, vocab_size=1024))
    return str(save_model(model, tok, folder / "tiny"))


def trl_anchor(model_dir: str, corpus: Path, steps: int, threads: int | None) -> dict:
    """TRL 0.11.4's generate and step seconds on the same model and corpus (bench/anchor_trl_ppo.py)."""
    extra = ["--threads", str(threads)] if threads else []
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "anchor_trl_ppo.py"), model_dir,
                             "--corpus", str(corpus), "--steps", str(max(steps, 2)), *extra],
                            capture_output=True, text=True)
    found = re.search(r"generate_s=([0-9.]+) step_s=([0-9.]+)", result.stdout)
    if result.returncode != 0 or not found:
        sys.exit(f"error: the TRL anchor failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return {"generate_s": float(found.group(1)), "step_s": float(found.group(2)), "measured": "this run"}


def bench(name: str, base: str, corpus: Path, out: Path, config) -> dict:
    from rlhf_lens.rlhf import train_ppo

    started = time.perf_counter()
    train_ppo(base, "vader", str(corpus), out, config)
    total = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = log[1:] or log  # the first step warms caches and allocators
    rollout = statistics.median(r["rollout_s"] for r in rows)
    step = statistics.median(r["step_s"] for r in rows)
    tokens = statistics.mean(r["response_tokens"] for r in rows) * config.batch_size
    return {"model": name, "batch_size": config.batch_size, "mini_batch_size": config.mini_batch_size,
            "ppo_epochs": config.ppo_epochs, "new_tokens": [config.min_new_tokens, config.max_new_tokens],
            "steps_timed": len(rows), "rollout_s": round(rollout, 4), "rollout_tokens_per_s": round(tokens / rollout, 1),
            "step_s": round(step, 4), "update_s": round(step - rollout, 4), "steps_per_s": round(1 / step, 3),
            "run_s_incl_load_and_eval": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny model only, 4 steps")
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps per model (default 6; 4 with --small)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--anchors", action="store_true",
                        help="measure TRL 0.11.4 on the tiny model in the same run (needs `make anchors`)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.anchors and (problem := missing_line("trl")):
        sys.exit(problem)
    if args.threads:
        torch.set_num_threads(args.threads)
    from rlhf_lens.rlhf import PPOConfig

    models = ["tiny"] if args.small else [m.strip() for m in args.models.split(",") if m.strip()]
    steps = args.steps or (4 if args.small else 6)
    results = []
    trl = TRL_REFERENCE
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = write_corpus(folder / "reviews.jsonl")
        for name in models:
            if name == "tiny":  # TRL's reference setting: 64 rollouts of 16 tokens, minibatch 16, 4 epochs
                base = tiny_model(folder, corpus)
                config = PPOConfig(steps=steps, batch_size=64, mini_batch_size=16, ppo_epochs=4, lr=1e-4,
                                   min_new_tokens=16, max_new_tokens=16, eval_prompts=8, checkpoint_every=10**6)
            elif name == "smollm2":  # the demo's setting
                base = "smollm2"
                config = PPOConfig(steps=steps, batch_size=16, mini_batch_size=16, ppo_epochs=1, lr=3e-5,
                                   min_new_tokens=8, max_new_tokens=19, eval_prompts=4, checkpoint_every=10**6)
            else:
                sys.exit(f"unknown model {name!r}; use tiny or smollm2")
            results.append(bench(name, base, corpus, folder / f"run-{name}", config))
            if name == "tiny" and args.anchors:
                trl = trl_anchor(base, corpus, steps, args.threads)
    header = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "trl_0_11_4_reference_tiny": trl}
    if args.json:
        print(json.dumps({"settings": header, "results": results}, indent=2))
        return
    print(f"torch {header['torch']}, {header['threads']} threads; TRL 0.11.4 "
          f"{'measured in this run' if trl is not TRL_REFERENCE else 'reference'} (tiny, 64 x 16 tokens): "
          f"generate {trl['generate_s']} s + step {trl['step_s']} s")
    for r in results:
        print(f"{r['model']:8s} batch {r['batch_size']} (minibatch {r['mini_batch_size']}, {r['ppo_epochs']} epochs, "
              f"{r['new_tokens'][0]}..{r['new_tokens'][1]} new tokens), median of {r['steps_timed']} steps: "
              f"rollout {r['rollout_s']:.3f} s ({r['rollout_tokens_per_s']:.0f} tokens/s), "
              f"update {r['update_s']:.3f} s, whole step {r['step_s']:.3f} s = {r['steps_per_s']:.2f} steps/s")
        if r["model"] == "tiny":
            ok = r["update_s"] <= trl["step_s"]
            print(f"         vs TRL: update {r['update_s']:.3f} s vs {trl['step_s']} s "
                  f"({'met' if ok else 'NOT met'}); rollout {r['rollout_s']:.3f} s vs {trl['generate_s']} s")


if __name__ == "__main__":
    main()
