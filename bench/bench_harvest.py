"""Harvest throughput and memory.

1. Tokens/s of `harvest()` end to end (tokenization, hooked forward passes, shard writes,
   manifest) against a bare `torch.no_grad()` forward of the same model over the same batches
   (same documents, same length-sorted batching and padding), both for the full causal LM
   (with logits) and for the blocks up to the deepest harvested one. Target: harvest at most
   10% slower than the bare forward.
2. Peak resident memory (VmHWM, else ru_maxrss) of a harvest, and of one epoch of shuffled reading, over
   1x and 10x the documents, each in a fresh subprocess. Target: 10x at most 1.2x of 1x.

Usage: python bench/bench_harvest.py [--small] [--json]
The model is a tiny GPT-NeoX from a config (random weights: speed does not depend on them);
the corpus is synthetic reviews of varied length. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RLHF_LENS_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the movie film plot actor was is a and story scene it this director of with to in ending music "
         "good great love wonderful excellent fun happy best bad terrible boring awful hate worst sad dull").split()


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    """Synthetic reviews, 20..400 words each (so some fill max_tokens and some are short)."""
    rng = np.random.RandomState(seed)
    with path.open("w") as f:
        for _ in range(n_docs):
            words = rng.choice(WORDS, size=int(rng.randint(20, 400)))
            f.write(json.dumps({"text": " ".join(words) + " .", "split": "test"}) + "\n")
    return path


def build_model(folder: Path, args) -> Path:
    from rlhf_lens.models import TinyModelConfig, build_tiny_model, save_model

    texts = [json.loads(line)["text"] for line in write_corpus(folder / "tok.jsonl", 300).read_text().splitlines()]
    model, tok = build_tiny_model(texts, TinyModelConfig(layers=args.blocks, width=args.width, heads=4,
                                                         vocab_size=2000, context=512))
    return save_model(model, tok, folder / "model")


def batches_like_harvest(tokenizer, texts: list[str], max_tokens: int, shard_tokens: int, batch_size: int):
    """The batches harvest runs: shards of whole documents, longest first inside a shard, right-padded."""
    ids = tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
    shards, current, count = [], [], 0
    for doc_ids in ids:
        current.append(doc_ids)
        count += len(doc_ids)
        if count >= shard_tokens:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    out = []
    for shard in shards:
        ordered = sorted((d for d in shard if d), key=len, reverse=True)
        for b in range(0, len(ordered), batch_size):
            batch = ordered[b:b + batch_size]
            width = max(map(len, batch))
            x = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, d in enumerate(batch):
                x[row, :len(d)] = torch.tensor(d)
                mask[row, :len(d)] = 1
            out.append((x, mask))
    return out, sum(map(len, ids))


def bare_forward_seconds(model, batches, upto: int | None) -> float:
    """No-grad forward over the batches; with `upto`, only blocks 0..upto (a hook stops the rest)."""
    from rlhf_lens.models import mlp_module

    class Stop(Exception):
        pass

    def stop(module, inputs, output):
        raise Stop

    handle = mlp_module(model, upto).register_forward_hook(stop) if upto is not None else None
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for x, mask in batches:
                try:
                    model(input_ids=x, attention_mask=mask, use_cache=False)
                except Stop:
                    pass
    finally:
        if handle is not None:
            handle.remove()
    return time.perf_counter() - start


def throughput(args, work: Path) -> dict:
    from rlhf_lens.harvest import HarvestConfig, harvest
    from rlhf_lens.models import load_model

    model_dir = args.model_spec or str(build_model(work, args))
    corpus = write_corpus(work / "corpus.jsonl", args.docs)
    model, tok = load_model(model_dir)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    batches, n_tokens = batches_like_harvest(tok, texts, args.max_tokens, args.shard_tokens, args.batch_size)
    layers = [int(x) for x in args.layers.split(",")]
    config = HarvestConfig(layers=layers, corpus=str(corpus), max_tokens=args.max_tokens, batch_size=args.batch_size,
                           shard_tokens=args.shard_tokens)
    times = {"bare_full": [], "bare_upto": [], "harvest": []}
    bare_forward_seconds(model, batches[:2], None)  # warm-up
    for _ in range(args.repeats):  # interleaved, so machine load drifts hit all three alike
        times["bare_full"].append(bare_forward_seconds(model, batches, None))
        times["bare_upto"].append(bare_forward_seconds(model, batches, max(layers)))
        out = work / "store"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        store = harvest(model_dir, config, out, model=model, tokenizer=tok)
        times["harvest"].append(time.perf_counter() - start)
    assert store.n_tokens == n_tokens
    best = {k: min(v) for k, v in times.items()}
    return {
        "model": args.model_spec or f"tiny GPT-NeoX, {args.blocks} blocks, width {args.width}",
        "tokens": n_tokens, "docs": args.docs, "shards": len(store.manifest["shards"]), "layers": layers, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "tokens_per_s": {k: n_tokens / v for k, v in best.items()},
        "harvest_vs_bare_full": best["harvest"] / best["bare_full"],
        "harvest_vs_bare_upto": best["harvest"] / best["bare_upto"],
        "all_seconds": times,
    }


def child(args) -> None:
    """Run one harvest (or one epoch of reading) and print this process's peak RSS in MiB."""
    from rlhf_lens.harvest import HarvestConfig, harvest
    from rlhf_lens.store import ActivationStore

    layers = [int(x) for x in args.layers.split(",")]
    if args.child == "harvest":
        config = HarvestConfig(layers=layers, corpus=args.corpus, max_tokens=args.max_tokens,
                               batch_size=args.batch_size, shard_tokens=args.shard_tokens)
        store = harvest(args.model, config, args.out)
    else:
        store = ActivationStore(args.out)
        rows = sum(len(b) for b in store.source(layers[0]).batches(4096, seed=0, epoch=0))
        assert rows == store.n_tokens
    print(json.dumps({"peak_mib": peak_rss_kib() / 1024, "tokens": store.n_tokens,
                      "shards": len(store.manifest["shards"])}))


def peak_rss_kib() -> int:
    """This process's peak RSS. On Linux ru_maxrss of an exec'd child starts at its parent's RSS at
    fork time (exec records the old address space's high-water mark), so prefer VmHWM, which counts
    only this program's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(args, work: Path) -> dict:
    model_dir = args.model_spec or (work / "model" if (work / "model").exists() else build_model(work, args))
    result = {}
    for factor in (1, 10):
        corpus = write_corpus(work / f"mem{factor}.jsonl", args.mem_docs * factor, seed=factor)
        out = work / f"mem-store-{factor}"
        shutil.rmtree(out, ignore_errors=True)
        for mode in ("harvest", "read"):
            cmd = [sys.executable, __file__, "--child", mode, "--model", str(model_dir), "--corpus", str(corpus),
                   "--out", str(out), "--layers", args.layers, "--max-tokens", str(args.max_tokens),
                   "--batch-size", str(args.batch_size), "--shard-tokens", str(args.shard_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result[f"{mode}_{factor}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("harvest", "read"):
        result[f"{mode}_ratio_10x_vs_1x"] = result[f"{mode}_10x"]["peak_mib"] / result[f"{mode}_1x"]["peak_mib"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="Tiny settings for a quick check.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument("--docs", type=int, default=512, help="Documents for the throughput figures.")
    parser.add_argument("--mem-docs", type=int, default=300, help="Documents for the 1x memory run (10x: ten times).")
    parser.add_argument("--model-spec", help="Measure this model (folder, hub id or smollm2) instead of a tiny one.")
    parser.add_argument("--blocks", type=int, default=6, help="Blocks of the tiny GPT-NeoX.")
    parser.add_argument("--width", type=int, default=256, help="Width of the tiny GPT-NeoX.")
    parser.add_argument("--layers", default="2,3,4", help="Harvested blocks.")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["harvest", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.small:
        args.docs, args.mem_docs, args.blocks, args.width, args.repeats = 96, 60, 4, 64, 2
        args.layers, args.shard_tokens = "1,2", 4096
    work = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
    os.environ.setdefault("RLHF_LENS_CACHE", str(work / "cache"))
    try:
        figures = {"throughput": throughput(args, work), "memory": memory(args, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    t, m = figures["throughput"], figures["memory"]
    print(f"model: {t['model']}; layers {t['layers']}; "
          f"{t['docs']} docs, {t['tokens']} tokens, {t['shards']} shards; batch {t['batch_size']}; "
          f"{t['threads']} threads")
    for name, value in t["tokens_per_s"].items():
        print(f"  {name:>10}: {value:10.0f} tokens/s")
    print(f"  harvest time / bare full forward:        {t['harvest_vs_bare_full']:.3f}  (target <= 1.10)")
    print(f"  harvest time / bare forward to layer {max(t['layers'])}:  {t['harvest_vs_bare_upto']:.3f}")
    for mode in ("harvest", "read"):
        one, ten = m[f"{mode}_1x"], m[f"{mode}_10x"]
        print(f"  peak RSS {mode:>7}: 1x {one['peak_mib']:.0f} MiB ({one['tokens']} tokens, {one['shards']} shards), "
              f"10x {ten['peak_mib']:.0f} MiB ({ten['tokens']} tokens, {ten['shards']} shards): "
              f"ratio {m[f'{mode}_ratio_10x_vs_1x']:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
