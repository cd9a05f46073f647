"""Reward-model training side by side: TRL's RewardTrainer (full fine-tuning) against rlhf-lens's
`rm.train_reward_model` with train = full and train = head (the cached-states default), on the same model and the
same preference pairs, in one run.

The pairs are sampled from the model on pang-lee and labelled by the gold (`preferences.make_pairs`, gold vader, no
noise, no bias). Ours runs first and splits them by prompt (seeded, rm.json's split); TRL trains on every pair ours
does not hold out (train + validation), and all three are scored on the same held-out pairs through `rm:PATH` (the
reward any run would use), accuracy against the labels and against the gold (`rm.evaluate.pair_accuracy`).
pairs/s = training pairs x epochs / training seconds: TRL's `train_runtime`, ours rm.json's training.seconds
(for train = head: the head's fit alone, the states are computed before it). `wall s` is the whole call, from
loading the model to the saved RM (ours also scores its held-out pairs; TRL also tokenizes), the fair figure for
what the head's cache costs. Full fine-tuning runs the same epochs, batch size and learning rate in both (TRL's
default linear decay; ours a constant rate); the head its defaults (epochs = 0: early stopping, lr 1e-3). Timings on a shared machine are
noisy; no figure here is asserted anywhere.

Usage: python bench/bench_rm.py [--model tiny|smollm2] [--prompts N] [--completions C] [--epochs E] [--lr-full LR] [--threads N]
       [--out DIR] [--json]
--out: the base model and the pairs are reused from an earlier run into the same folder; the RMs are trained
afresh into a new rms-* folder inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RLHF_LENS_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny (the tests' tiny GPT-NeoX, built here) or smollm2")
    p.add_argument("--corpus", default="pang-lee")
    p.add_argument("--gold", default="vader", help="the gold reward that labels the pairs")
    p.add_argument("--prompts", type=int, default=400, help="prompts sampled (one pair each, none on a gold tie)")
    p.add_argument("--completions", type=int, default=4,
                   help="completions per prompt (the pair: the gold's best and worst; more, fewer gold ties)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of full fine-tuning (TRL and ours)")
    p.add_argument("--lr-full", type=float, default=1e-4, help="learning rate of full fine-tuning (TRL and ours)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step (all three)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    return p.parse_args()


def base_model(spec: str, corpus: str, out: Path) -> str:
    """A Hugging Face folder of the model: the tiny GPT-NeoX as tests/conftest.py builds it (on the corpus's train
    texts), or SmolLM2-135M converted once from its offline GGUF (TRL loads a folder)."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, load_model, save_model

    if (out / "base" / "config.json").is_file():  # built by an earlier run into the same --out
        return str(out / "base")
    if spec == "tiny":
        texts = load_corpus(corpus).texts("train")[:400]
        model, tok = build_tiny_model(texts, TinyModelConfig(layers=3, width=32, heads=4, vocab_size=300,
                                                             pretrain_steps=30))
    else:
        model, tok = load_model(spec)
        # Dequantized on loading from the GGUF: plain float weights, which TRL's Trainer refuses to fine-tune
        # while the config still names a quantization.
        model.config.__dict__.pop("quantization_config", None)
    return str(save_model(model, tok, out / "base"))


def ours(base: str, pairs: Path, out: Path, train: str, args: argparse.Namespace) -> dict:
    from rlhf_lens.rm import RMConfig, train_reward_model

    full = train == "full"
    config = RMConfig(train=train, epochs=args.epochs if full else 0, lr=args.lr_full if full else RMConfig.lr,
                      batch_size=args.batch_size, seed=args.seed)
    started = time.perf_counter()
    model = train_reward_model(base, pairs, out, config)
    wall = time.perf_counter() - started
    record = json.loads((out / "rm.json").read_text())
    training = record["training"]
    return {"method": f"rlhf-lens train = {train}", "model": str(model), "epochs": training["epochs"],
            "n_train": record["split"]["n_train"], "train_s": training["seconds"], "wall_s": wall,
            "pairs_per_s": training["pairs_per_second"], "own_accuracy": record["accuracy"],
            "split": {k: record["split"][k] for k in ("train", "validation", "test")}}


def trl(base: str, pairs: list, train_idx: list[int], out: Path, args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rows = [pairs[i] for i in train_idx]
    data = Dataset.from_dict({"prompt": [p.prompt for p in rows], "chosen": [p.chosen for p in rows],
                              "rejected": [p.rejected for p in rows]})
    config = RewardConfig(output_dir=str(out / "run"), num_train_epochs=args.epochs, learning_rate=args.lr_full,
                          per_device_train_batch_size=args.batch_size, max_length=None, report_to="none",
                          use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=args.seed,
                          dataloader_num_workers=0, dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    result = trainer.train()
    trainer.save_model(str(out / "model"))
    seconds = result.metrics["train_runtime"]
    return {"method": "TRL RewardTrainer (full)", "model": str(out / "model"), "epochs": args.epochs,
            "n_train": len(rows), "train_s": seconds, "wall_s": time.perf_counter() - started,
            "pairs_per_s": len(rows) * args.epochs / seconds}


def held_out_accuracy(model: str, pairs: list, test_idx: list[int]) -> dict:
    """Accuracy on the held-out pairs, scored through rm:PATH (the reward a run would use)."""
    import numpy as np

    from rlhf_lens.rewards import load_reward
    from rlhf_lens.rm.evaluate import pair_accuracy

    test = [pairs[i] for i in test_idx]
    scores = np.asarray(load_reward(f"rm:{model}")([t for p in test for t in p.texts()]))
    return pair_accuracy(scores[0::2], scores[1::2], test)


def _rate(rate: dict | None) -> str:
    if not rate or rate["share"] is None:
        return "-"
    lo, hi = rate["interval"]
    return f"{rate['share']:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from rlhf_lens.preferences import PreferenceConfig, make_pairs
    from rlhf_lens.preferences.pairs import read_pairs
    from rlhf_lens.rlhf import PPOConfig

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-rm-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = base_model(args.model, args.corpus, work)
    pairs_file = make_pairs(base, args.corpus, args.gold, work / "pairs",
                            PreferenceConfig(prompts=args.prompts, completions=args.completions, seed=args.seed), PPOConfig(batch_size=32))
    pairs = read_pairs(pairs_file)
    pairs_s = time.perf_counter() - started
    rms = Path(tempfile.mkdtemp(dir=work, prefix="rms-"))  # fresh: train-rm returns a finished RM at once
    rows = [ours(base, pairs_file, rms / "ours-head", "head", args)]
    split = rows[0].pop("split")
    test_idx = split["test"]
    rows.append(ours(base, pairs_file, rms / "ours-full", "full", args))
    rows[1].pop("split")
    rows.append(trl(base, pairs, sorted(split["train"] + split["validation"]), rms / "trl", args))
    for row in rows:
        row["accuracy"] = held_out_accuracy(row["model"], pairs, test_idx)

    print(f"model {args.model}; {len(pairs)} pairs from {args.prompts} prompts of {args.corpus}, gold {args.gold} "
          f"(sampled and labelled in {pairs_s:.0f} s); held out {len(test_idx)} pairs (by prompt, seed {args.seed}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; work {work}")
    header = f"{'method':<26} {'epochs':>6} {'train pairs':>11} {'train s':>8} {'pairs/s':>8} {'wall s':>7} " \
             f"{'acc vs labels':>20} {'acc vs gold':>20}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['method']:<26} {row['epochs']:>6} {row['n_train']:>11} {row['train_s']:>8.1f} "
              f"{row['pairs_per_s']:>8.1f} {row['wall_s']:>7.1f} {_rate(row['accuracy']['labels']):>20} "
              f"{_rate(row['accuracy']['gold']):>20}")
    print(f"(accuracy on the {len(test_idx)} held-out pairs, [95% interval]; gold: the pairs whose gold differs)")
    head, full = rows[0], rows[1]
    print(f"the cached-head default: {head['wall_s']:.1f} s wall against {full['wall_s']:.1f} s for our full "
          f"fine-tuning (x{full['wall_s'] / head['wall_s']:.2f}); accuracy vs gold "
          f"{head['accuracy']['gold']['share'] - full['accuracy']['gold']['share']:+.3f}"
          if head["accuracy"]["gold"] and full["accuracy"]["gold"] else "no pair with a known gold held out")
    for row in rows[:2]:  # ours measured itself on the same pairs from its cached states or its own scoring
        if abs(row["own_accuracy"]["labels"]["share"] - row["accuracy"]["labels"]["share"]) > 1e-9:
            print(f"note: {row['method']}'s rm.json says accuracy {row['own_accuracy']['labels']['share']:.3f}, "
                  f"rm:PATH scores give {row['accuracy']['labels']['share']:.3f}", file=sys.stderr)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "own_accuracy"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
