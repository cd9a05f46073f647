#!/usr/bin/env python3
"""Seconds per block of the reward effect (interp/reward_effect.py) with SmolLM2-135M on this machine's CPUs.

`--directions` seeded random directions at block `--layer` of `smollm2` (models.load_model), TokenChange matched on
`--kl` nats per token over `--prompts` held-out prompts of pang-lee, read through VADER against frequency-matched
random token sets (`--null-sets`; the pool's strata from the base model's mean next-token probability on the
prompts). Prints the time of each part and, last, `FIGURE reward_effect_s_per_block=<x>`.

    python bench/bench_reward_effect.py --directions 20 --prompts 24
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--directions", type=int, default=20)
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--kl", type=float, default=0.1, help="target KL, nats per token")
    p.add_argument("--null-sets", type=int, default=2000)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from rlhf_lens.data import load_corpus
    from rlhf_lens.diff import output, steering
    from rlhf_lens.interp.reward_effect import OutputReading, reward_effects
    from rlhf_lens.models import load_model

    t0 = time.perf_counter()
    model, tok = load_model("smollm2")
    prompts = steering.heldout_prompts(load_corpus("pang-lee"), tok, args.prompts, "test", [], 0)
    ids, kwargs = steering.prompt_inputs(model, prompts)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, **kwargs).logits.float(), -1)
    mask = kwargs["attention_mask"].float()[..., None]
    base_prob = (probs * mask).sum((0, 1)) / mask.sum()
    utility = output.WordUtility("vader", None, None, "It was {word}.")
    vocab = output.vocabulary(tok, int(model.get_output_embeddings().weight.shape[0]))
    pool = output.NullPool(vocab, utility, 512, 0, base_prob)
    reading = OutputReading(vocab, utility, pool, prompts, {args.layer: args.kl}, args.kl, null_sets=args.null_sets)
    print(f"INFO setup (model, vocabulary of {len(vocab.ids)} candidates, pool): {time.perf_counter() - t0:.1f} s")

    d = int(model.config.hidden_size)
    directions = torch.randn(args.directions, d, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    records = reward_effects(model, reading, args.layer, directions, output_top=args.top)
    seconds = time.perf_counter() - t0
    kls = [r["token_change"]["kl"] for r in records]
    print(f"INFO {args.directions} directions, {args.prompts} prompts, block {args.layer}, target KL {args.kl}: "
          f"{seconds:.1f} s ({seconds / args.directions:.2f} s a direction); KL reached {min(kls):.3f}..{max(kls):.3f}; "
          f"claims {sum(r['reward_effect']['claim'] is not None for r in records)}")
    print(f"FIGURE reward_effect_s_per_block={seconds:.1f}")


if __name__ == "__main__":
    main()
