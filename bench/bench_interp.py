"""Example collection and explainer throughput (interp).

1. `collect_examples` over a synthetic activation store (random activations, Pythia-70m-like
   width 512, 50 tokens per document) for the pipeline's case (two SAEs, m = 512 and 1024,
   10 features each) and for every feature of the m = 1024 SAE: seconds, tokens/s, and the
   ratio to a bare pass that only reads the shards and encodes them with the same SAEs
   (the bookkeeping overhead of the running top lists, random records and corpus counts).
2. The offline explainer: explain + simulate + score, per feature.
3. With --smollm2: the hf explainer on SmolLM2-135M (CPU): seconds per explanation and per
   simulated record, and whether its simulation answers parse.
4. With --yes-no (alone): P(yes) readings (interp/answers.py) of SmolLM2-135M on detection-like prompts of about
   --prompt-tokens tokens (chat template included), uncached, at each of --batch-sizes: the load time, prompts/s
   and tokens/s (the choice of answers.HF_BATCH).

Usage: python bench/bench_interp.py [--small] [--smollm2] [--json]
       python bench/bench_interp.py --yes-no [--batch-sizes 1,4,8,16,32] [--prompts 64] [--prompt-tokens 100]
Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RLHF_LENS_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_store(folder: Path, n_docs: int, d: int, vocab: int, doc_tokens: int = 50, shard_docs: int = 320):
    """A complete store in the store.py format with random (ReLU-ish) activations."""
    from rlhf_lens.io import save_safetensors, write_json
    from rlhf_lens.store import FORMAT, VERSION, ActivationStore

    gen = torch.Generator().manual_seed(0)
    entries, total = [], 0
    for k, start in enumerate(range(0, n_docs, shard_docs)):
        end = min(n_docs, start + shard_docs)
        n = (end - start) * doc_tokens
        tensors = {"layer0": torch.randn(n, d, generator=gen),
                   "token_ids": torch.randint(0, vocab, (n,), generator=gen, dtype=torch.int32),
                   "doc": torch.arange(start, end).repeat_interleave(doc_tokens),
                   "pos": torch.arange(doc_tokens, dtype=torch.int32).repeat(end - start)}
        name = f"shard-{k:05d}.safetensors"
        save_safetensors(folder / name, tensors)
        entries.append({"file": name, "doc_start": start, "doc_end": end, "n_tokens": n})
        total += n
    write_json(folder / "manifest.json", {
        "format": FORMAT, "version": VERSION, "model": "bench", "tokenizer": "bench", "corpus": "bench",
        "split": "test", "layers": [0], "d": d, "dtype": "float32", "n_docs": n_docs, "n_tokens": total,
        "complete": True, "shards": entries})
    return ActivationStore(folder)


def bare_pass(store, saes: dict) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for shard in store.iter_shards(0):
            for sae in saes.values():
                for i in range(0, len(shard.acts), 4096):
                    sae.encode(shard.acts[i:i + 4096])
    return time.perf_counter() - start


def yes_no_throughput(batch_sizes: list[int], n_prompts: int, prompt_tokens: int) -> dict:
    """Load time, then prompts/s and tokens/s of uncached P(yes) readings of SmolLM2 per batch size."""
    import random

    from rlhf_lens.interp.answers import LocalYesNo

    words = ("the movie film plot actor was is a and story scene it this director of with to in ending music "
             "good great love wonderful excellent fun happy best bad terrible boring awful hate worst").split()
    reader = LocalYesNo("smollm2", cache=False)
    start = time.perf_counter()
    reader.local.load()
    figures: dict = {"load_s": round(time.perf_counter() - start, 1), "prompts": n_prompts}
    template = len(reader.local.prompt_ids([{"role": "user", "content": ""}], 1))
    rng = random.Random(0)
    prompts = []
    for _ in range(n_prompts):
        # lengths vary by +-20% around the target, as real examples do
        n_words = max(1, int((prompt_tokens - template - 12) * rng.uniform(0.8, 1.2)))
        text = " ".join(rng.choice(words) for _ in range(n_words))
        prompts.append([{"role": "user", "content": f"Does this text contain positive words? Text: {text}\n"
                                                    "Answer yes or no."}])
    tokens = sum(len(reader.local.prompt_ids(m, 1)) for m in prompts)
    figures["mean_prompt_tokens"] = round(tokens / n_prompts, 1)
    reader.batch_size = 4
    reader.read(prompts[:8], lambda i, v: None)  # warm-up
    for size in batch_sizes:
        reader.batch_size = size
        start = time.perf_counter()
        reader.read(prompts, lambda i, v: None)
        seconds = time.perf_counter() - start
        figures[f"batch_{size}"] = {"prompts_per_s": round(n_prompts / seconds, 2),
                                    "tokens_per_s": round(tokens / seconds), "seconds": round(seconds, 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="A quick run (fewer documents).")
    parser.add_argument("--smollm2", action="store_true", help="Also time the hf explainer on SmolLM2-135M.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument("--yes-no", action="store_true", help="Only time P(yes) readings of SmolLM2-135M.")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32", help="--yes-no: prompts per forward pass, tried.")
    parser.add_argument("--prompts", type=int, default=64, help="--yes-no: prompts read per batch size.")
    parser.add_argument("--prompt-tokens", type=int, default=100, help="--yes-no: about this many tokens a prompt.")
    args = parser.parse_args()
    if args.yes_no:
        figures = yes_no_throughput([int(b) for b in args.batch_sizes.split(",")], args.prompts, args.prompt_tokens)
        print(json.dumps(figures, indent=2))
        return

    from rlhf_lens.interp import ExampleConfig, collect_examples, get_explainer, simulation_score
    from rlhf_lens.models import train_tokenizer
    from rlhf_lens.sae import SAEConfig, SparseAutoencoder

    words = ("the movie film plot actor was is a and story scene it this director of with to in ending music "
             "good great love wonderful excellent fun happy best bad terrible boring awful hate worst sad dull")
    tokenizer = train_tokenizer([words] * 50, 300)
    n_docs = 640 if args.small else 4000
    d = 512
    figures: dict = {"n_docs": n_docs, "n_tokens": n_docs * 50, "d": d}
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp), n_docs, d, len(tokenizer))
        saes = {"m512": SparseAutoencoder(SAEConfig(d_in=d, dict_size=512)),
                "m1024": SparseAutoencoder(SAEConfig(d_in=d, dict_size=1024, seed=1))}
        config = ExampleConfig()
        bare = bare_pass(store, saes)
        start = time.perf_counter()
        examples = collect_examples(store, 0, saes, {"m512": list(range(10)), "m1024": list(range(10))}, tokenizer,
                                    config)
        pipeline_case = time.perf_counter() - start
        figures["bare_read_and_encode_s"] = round(bare, 2)
        figures["collect_2x10_features_s"] = round(pipeline_case, 2)
        figures["collect_2x10_tokens_per_s"] = round(n_docs * 50 / pipeline_case)
        figures["collect_2x10_vs_bare"] = round(pipeline_case / bare, 2)
        one = {"m1024": saes["m1024"]}
        bare_one = bare_pass(store, one)
        start = time.perf_counter()
        collect_examples(store, 0, one, {"m1024": list(range(1024))}, tokenizer, config, corpus_stats=False)
        every = time.perf_counter() - start
        figures["collect_all_1024_features_s"] = round(every, 2)
        figures["collect_all_1024_vs_bare"] = round(every / bare_one, 2)
        figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

        offline = get_explainer("offline")
        items = list(examples.features.values())
        start = time.perf_counter()
        shown = [item.shown() for item in items]
        texts = offline.explain_many([(str(i.feature), t, a) for i, (t, a) in zip(items, shown)], examples.corpus)
        sims = offline.simulate_many([(t, [r.tokens for r in i.scoring()]) for t, i in zip(texts, items)])
        [simulation_score(s, [r.values for r in i.scoring()]) for s, i in zip(sims, items)]
        figures["offline_explain_simulate_score_ms_per_feature"] = round(1000 * (time.perf_counter() - start)
                                                                         / len(items), 2)

        if args.smollm2:
            from rlhf_lens.errors import UserError

            os.environ["RLHF_LENS_CACHE"] = str(Path(tmp) / "cache")  # time real generations, not the cache
            hf = get_explainer("hf:smollm2")
            item = items[0]
            tokens, acts = item.shown()
            start = time.perf_counter()
            text = hf.explain_many([("0", tokens, acts)])[0]
            figures["smollm2_explain_s"] = round(time.perf_counter() - start, 1)  # includes the ~20 s load
            figures["smollm2_explanation"] = text
            start = time.perf_counter()
            try:
                hf.simulate_many([(text, [item.scoring()[0].tokens])])
                figures["smollm2_simulation_parses"] = True
            except UserError as e:
                figures["smollm2_simulation_parses"] = False
                figures["smollm2_simulation_error"] = str(e)[:160]
            figures["smollm2_simulate_record_s"] = round(time.perf_counter() - start, 1)

    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>48}  {value}")


if __name__ == "__main__":
    main()
