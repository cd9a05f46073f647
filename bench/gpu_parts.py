#!/usr/bin/env python3
"""One PPO step, a harvest and an SAE group timed on a randomly initialised Pythia-70m-shaped model (part of
bench/gpu_check.sh; no hub needed).

The model is the Pythia architecture at Pythia-70m's shape (GPT-NeoX, 6 blocks, width 512, 8 heads, MLP 2048)
with a BPE vocabulary trained on Pang & Lee (8192 tokens instead of Pythia's 50k: the vocabulary is not
what these timings are about). Each figure is printed as `FIGURE name=value unit`.

    .venv/bin/python bench/gpu_parts.py --device cuda
    .venv/bin/python bench/gpu_parts.py --device cpu --quick     # a dry run of the script
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="small settings (a dry run on a CPU)")
    args = parser.parse_args()

    from rlhf_lens.data import load_corpus
    from rlhf_lens.harvest import HarvestConfig, harvest
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model
    from rlhf_lens.rlhf import PPOConfig, train_ppo
    from rlhf_lens.sae import SAEConfig, train_saes

    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-parts-"))
    shape = (TinyModelConfig(layers=2, width=64, heads=4, vocab_size=512) if args.quick else
             TinyModelConfig(layers=6, width=512, heads=8, vocab_size=8192))
    model, tokenizer = build_tiny_model(load_corpus("pang-lee").texts("train"), shape)
    model_dir = save_model(model, tokenizer, out / "model")
    print(f"model: GPT-NeoX, {shape.layers} blocks, width {shape.width}, vocab {len(tokenizer)}, random init")

    ppo = PPOConfig(steps=1, batch_size=16 if args.quick else 64, mini_batch_size=16, ppo_epochs=1 if args.quick else 4,
                    lr=1e-6, eval_prompts=8 if args.quick else 64, device=args.device)
    start = time.perf_counter()
    train_ppo(str(model_dir), "vader", "pang-lee", out / "ppo", ppo)
    _sync(args.device)
    print(f"FIGURE ppo_one_step_with_eval_s={time.perf_counter() - start:.2f} s "
          f"(batch {ppo.batch_size}, {ppo.ppo_epochs} PPO epochs, {ppo.eval_prompts} eval prompts x 2 models)")

    layers = list(range(shape.layers))
    config = HarvestConfig(layers=layers, corpus="pang-lee", max_docs=64 if args.quick else 1100,
                           max_tokens=64 if args.quick else 256, batch_size=32, device=args.device)
    start = time.perf_counter()
    store = harvest(str(model_dir), config, out / "acts")
    _sync(args.device)
    seconds = time.perf_counter() - start
    print(f"FIGURE harvest_tokens_per_s={store.n_tokens / seconds:.0f} tok/s ({store.n_tokens} tokens x "
          f"{len(layers)} blocks in {seconds:.1f} s)")

    fields = {f.name for f in dataclasses.fields(SAEConfig)}
    device_kw = {"device": args.device} if "device" in fields else {}
    if not device_kw:
        print("note: SAEConfig has no device field here: the SAE group trains on the CPU")
    d = store.d
    configs = [SAEConfig(d_in=d, dict_size=ratio * d, epochs=1 if args.quick else 3, batch_size=4096 if not args.quick
                         else 256, seed=seed, data_seed=0, **device_kw) for ratio in (1, 2) for seed in (0, 1, 2)]
    start = time.perf_counter()
    train_saes(store.source(layers[-1]), configs, quiet=True)
    _sync(args.device)
    seconds = time.perf_counter() - start
    epochs = configs[0].epochs or 1
    print(f"FIGURE sae_group_tokens_per_s={store.n_tokens * epochs * len(configs) / seconds:.0f} tok/s "
          f"({len(configs)} SAEs (1x, 2x; 3 seeds) on one block, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
