#!/usr/bin/env python3
"""TRL anchor: seconds per PPO step of TRL 0.11.4's `PPOTrainer`, the 2023 API the paper's authors used.

The setting is bench/bench_ppo.py's tiny one: 64 rollouts of exactly 16 new tokens (sampled with top_k 0,
top_p 1, as the paper), minibatch 16, 4 PPO epochs, adaptive KL (init 0.2, target 6, horizon 10000), on
MODEL_DIR's GPT-NeoX. Per step it times `trainer.generate` (the rollouts) and `trainer.step` (reference and
policy forward passes, advantages, the 4 epochs of minibatch updates, the KL update) apart. Prompts are the
first 2..9 tokens of documents of `--corpus` (a .jsonl with a `text` field, as bench_ppo.py writes), or
random token ids without it. The reward is a cheap function of the response tokens: its values do not change
the work a step does.

The model is rebuilt with transformers 4 from the sizes in MODEL_DIR/config.json (rlhf-lens saves with
transformers 5, whose config format 4.x does not promise to read) and its weights are loaded from the
folder; the tokenizer is MODEL_DIR/tokenizer.json. Step 1 pays for allocation and is not counted: the medians are over steps 2..N.

Runs in the TRL anchors' venv (`make anchors`, bench/anchor_venv.py); any python3 can start it.

    python3 bench/anchor_trl_ppo.py MODEL_DIR --corpus reviews.jsonl --steps 6

Prints INFO lines (with `generate_s=`), then `FIGURE trl_ppo_step_s=<x> s` last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from anchor_venv import enter, runtime_line


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a GPT-NeoX folder: config.json, weights, tokenizer.json")
    p.add_argument("--corpus", default=None, help=".jsonl of documents with a 'text' field (prompts are cut from it)")
    p.add_argument("--steps", type=int, default=6, help="PPO steps, the first one not counted")
    p.add_argument("--batch", type=int, default=64, help="rollouts per step")
    p.add_argument("--mini-batch", type=int, default=16, help="minibatch of the PPO epochs")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per step")
    p.add_argument("--new-tokens", type=int, default=16, help="new tokens per rollout (exactly)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is not counted)")
    for flag, value in (("--batch", args.batch), ("--mini-batch", args.mini_batch), ("--epochs", args.epochs),
                        ("--new-tokens", args.new_tokens)):
        if value < 1:
            p.error(f"{flag} must be at least 1")
    if args.batch % args.mini_batch:
        p.error(f"--batch {args.batch} must be a multiple of --mini-batch {args.mini_batch}")
    return args


def neox_config(model_dir: str):
    """A transformers-4 GPTNeoXConfig with the sizes of MODEL_DIR/config.json."""
    from transformers import GPTNeoXConfig

    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        sys.exit(f"error: {model_dir} has no config.json: pass a GPT-NeoX model folder (e.g. rlhf-lens tiny-model)")
    saved = json.loads(open(path, encoding="utf-8").read())
    if saved.get("model_type") != "gpt_neox":
        sys.exit(f"error: {path}: model_type {saved.get('model_type')!r}; this anchor builds GPT-NeoX models only")
    rope = saved.get("rope_parameters") or {}
    sizes = {key: saved[key] for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "max_position_embeddings") if key in saved}
    return GPTNeoXConfig(**sizes, rotary_pct=saved.get("rotary_pct", rope.get("partial_rotary_factor", 0.25)),
                         use_parallel_residual=saved.get("use_parallel_residual", True),
                         tie_word_embeddings=saved.get("tie_word_embeddings", False),
                         eos_token_id=saved.get("eos_token_id"), bos_token_id=saved.get("bos_token_id"))


def prompt_ids(args: argparse.Namespace, tokenizer, vocab: int, generator) -> list[list[int]]:
    """Token ids of every usable prompt: a document's first 2..9 tokens, or random ids without a corpus."""
    import torch

    lengths = torch.randint(2, 10, (max(args.batch * args.steps, 256),), generator=generator).tolist()
    if args.corpus is None:
        return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]
    if not os.path.isfile(args.corpus):
        sys.exit(f"error: no corpus {args.corpus}: pass a .jsonl with a 'text' field per line")
    texts = [json.loads(line).get("text", "") for line in open(args.corpus, encoding="utf-8") if line.strip()]
    prompts = [tokenizer(text)["input_ids"][:lengths[i % len(lengths)]] for i, text in enumerate(texts)]
    prompts = [p for p in prompts if len(p) >= 2]
    if not prompts:
        sys.exit(f"error: {args.corpus} has no document of 2 tokens or more")
    return prompts


def main() -> int:
    args = parse_args()
    enter("trl", ("torch", "transformers", "trl"))
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    print(runtime_line())
    tokenizer_file = os.path.join(args.model_dir, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        sys.exit(f"error: {args.model_dir} has no tokenizer.json: pass a folder saved with its fast tokenizer")
    config = neox_config(args.model_dir)
    torch.manual_seed(args.seed)
    base, loading = GPTNeoXForCausalLM.from_pretrained(args.model_dir, config=config, output_loading_info=True)
    reference = GPTNeoXForCausalLM.from_pretrained(args.model_dir, config=config)
    if loading["missing_keys"]:  # the timing holds either way: it depends on the shapes, not on the weights
        print(f"INFO {len(loading['missing_keys'])} weight tensors not found in the folder, left at their random "
              f"init: {loading['missing_keys'][:3]}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file)
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    tokenizer.eos_token = tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos)
    ppo = PPOConfig(batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=args.epochs,
                    learning_rate=args.lr, init_kl_coef=0.2, target=6, horizon=10000, seed=args.seed, log_with=None)
    trainer = PPOTrainer(ppo, AutoModelForCausalLMWithValueHead.from_pretrained(base),
                         AutoModelForCausalLMWithValueHead.from_pretrained(reference), tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    prompts = prompt_ids(args, tokenizer, config.vocab_size, generator)
    sampling = {"top_k": 0, "top_p": 1.0, "do_sample": True, "pad_token_id": tokenizer.pad_token_id,
                "min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens}
    print(f"INFO model={args.model_dir} layers={config.num_hidden_layers} width={config.hidden_size} "
          f"vocab={config.vocab_size}; {args.batch} rollouts x {args.new_tokens} tokens, minibatch {args.mini_batch}, "
          f"{args.epochs} epochs; prompts from {args.corpus or 'random ids'}")

    generate_s, step_s = [], []
    for step in range(args.steps):
        picks = torch.randint(0, len(prompts), (args.batch,), generator=generator).tolist()
        queries = [torch.tensor(prompts[i]) for i in picks]
        started = time.perf_counter()
        responses = trainer.generate(queries, return_prompt=False, batch_size=args.batch, **sampling)
        generated = time.perf_counter()
        scores = [torch.tensor(float((r % 7 == 0).float().mean())) for r in responses]
        trainer.step(queries, responses, scores)
        done = time.perf_counter()
        if step:
            generate_s.append(generated - started)
            step_s.append(done - generated)
    generate, update = statistics.median(generate_s), statistics.median(step_s)
    print(f"INFO medians over steps 2..{args.steps}: generate_s={generate:.4f} step_s={update:.4f} "
          f"total_s={generate + update:.4f}")
    print(f"FIGURE trl_ppo_step_s={update:.4f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
