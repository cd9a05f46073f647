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
5. With --scorers (alone): the scorer cost per feature side by side, on real text: SmolLM2-135M's middle block
   harvested over --docs pang-lee test documents, a random SAE thresholded to fire on 2% of tokens (cost does not
   depend on what a feature means), --features features explained offline, each scorer with --null-explanations
   shuffled explanations and an empty answer cache: simulation (offline; and hf:smollm2's grammar-constrained
   simulator on --sim-features features: one forward step per simulated token, the slow one), detection and
   fuzzing (hf:smollm2's P(yes), answers.py). Per scorer: s/feature, prompts/feature, tokens/feature (tokens the
   model read, counted by a forward hook), tokens/s, answers from the cache, failures; the anchor: tokens/s of a
   bare batched forward pass of the same model over as many tokens of real text (no template, padding or cache).

Usage: python bench/bench_interp.py [--small] [--smollm2] [--json]
       python bench/bench_interp.py --yes-no [--batch-sizes 1,4,8,16,32] [--prompts 64] [--prompt-tokens 100]
       python bench/bench_interp.py --scorers [--features 6] [--sim-features 2] [--docs 80] [--json]
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


# --- --scorers: the scorer cost per feature, side by side ----------------------------------------


class TokenCounter:
    """Counts the tokens a causal LM reads (non-padding input tokens of every forward call, KV-cached steps
    included), through a forward pre-hook: the same measure for every scorer."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is not None:
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())


def scorer_store(model, tokenizer, folder: Path, n_docs: int, dict_size: int, fire_share: float):
    """SmolLM2's middle block harvested over `n_docs` pang-lee test documents (64 tokens each) into `folder`, and
    a random SAE whose encoder biases make each feature fire on `fire_share` of the tokens (a random direction with
    a threshold: its examples are real text, and a scorer's cost does not depend on what a feature means)."""
    from rlhf_lens.harvest import harvest
    from rlhf_lens.harvest.config import HarvestConfig
    from rlhf_lens.sae import SAEConfig, SparseAutoencoder

    layer = int(model.config.num_hidden_layers) // 2
    store = harvest("smollm2", HarvestConfig(layers=[layer], corpus="pang-lee", split="test", max_docs=n_docs,
                                             max_tokens=64), folder, model=model, tokenizer=tokenizer)
    acts = torch.cat([shard.acts for shard in store.iter_shards(layer)])
    sae = SparseAutoencoder(SAEConfig(d_in=store.d, dict_size=dict_size)).eval()
    with torch.no_grad():
        pre = sae.pre_activations(acts)
        sae.b_enc.copy_(-torch.quantile(pre, 1.0 - fire_share, dim=0))
    return store, layer, sae, int(acts.shape[0])


def bare_forward(model, ids: torch.Tensor, total: int, batch: int, length: int) -> float:
    """Tokens/s of plain forward passes over `total` tokens of real text (`ids`, repeated), in [batch, length]
    blocks without padding, the chat template or a cache: the bound a scorer reading as many tokens cannot beat."""
    from rlhf_lens.models import kwarg_names

    rows = max(1, round(total / length))
    flat = ids.repeat(rows * length // len(ids) + 1)[: rows * length].view(rows, length).to(model.device)
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in kwarg_names(model) else {}
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, rows, batch):
            model(input_ids=flat[i:i + batch], use_cache=False, **last_only)
    return rows * length / (time.perf_counter() - start)


def scorer_costs(n_features: int, sim_features: int, null_explanations: int, n_docs: int) -> dict:
    """Per scorer: s/feature, prompts/feature, tokens/feature, tokens/s, answers from cache and failures, for
    simulation (offline; and hf:smollm2's simulator on `sim_features` features), detection and fuzzing
    (hf:smollm2's P(yes)), each with `null_explanations` shuffled explanations; and the bare-forward anchor."""
    from rlhf_lens.interp import ExampleConfig, collect_examples, get_explainer, simulation_score
    from rlhf_lens.interp.answers import HF_BATCH, LocalYesNo
    from rlhf_lens.interp.explainers import HFExplainer
    from rlhf_lens.interp.llm import AnswerCache, hf_client
    from rlhf_lens.interp.scorers import choose_null_explanations, score_explanations, simulation_null

    reader = LocalYesNo("smollm2", cache=False)
    start = time.perf_counter()
    model, tokenizer = reader.local.load()
    out: dict = {"load_s": round(time.perf_counter() - start, 1), "batch": HF_BATCH,
                 "null_explanations": null_explanations}
    with tempfile.TemporaryDirectory() as tmp:
        # an empty answer cache: every answer is computed (RLHF_LENS_CACHE also holds the corpus)
        reader.cache = AnswerCache(Path(tmp) / "llm-cache")
        store, layer, sae, n_tokens = scorer_store(model, tokenizer, Path(tmp) / "acts", n_docs, 256, 0.02)
        out.update(layer=layer, n_docs=store.n_docs, n_tokens=n_tokens)
        config = ExampleConfig()
        examples = collect_examples(store, layer, {"sae": sae}, {"sae": list(range(n_features))}, tokenizer, config)
        items = list(examples.features.values())
        offline = get_explainer("offline")
        start = time.perf_counter()
        texts = offline.explain_many([(str(i.feature), *i.shown()) for i in items], examples.corpus)
        nulls = choose_null_explanations(texts, null_explanations, config.seed,
                                         [(i.sae, i.feature) for i in items])
        sims = offline.simulate_many([(t, [r.tokens for r in i.scoring()]) for t, i in zip(texts, items)])
        [simulation_score(s, [r.values for r in i.scoring()]) for s, i in zip(sims, items)]
        simulation_null(offline, items, texts, nulls)
        rows = {"simulation (offline)": {"features": len(items), "seconds": time.perf_counter() - start,
                                         "prompts": 0, "tokens": 0, "cached": 0, "failures": 0}}
        counter = TokenCounter(model)
        labels = [{"sae": i.sae, "feature": i.feature} for i in items]
        for scorer in ("detection", "fuzzing"):
            before = (reader.requests, reader.cached, reader.failures, counter.tokens)
            start = time.perf_counter()
            result = score_explanations([scorer], items, texts, nulls, labels, reader, config.seed)[scorer]
            rows[f"{scorer} (hf:smollm2)"] = {
                "features": len(items), "seconds": time.perf_counter() - start,
                "prompts": reader.requests - before[0] + reader.cached - before[1], "cached": reader.cached - before[1],
                "tokens": counter.tokens - before[3], "failures": reader.failures - before[2],
                "auroc": [r["auroc"] for r in result], "null": [r["null"] for r in result]}
        if sim_features:
            client = hf_client(reader.local, cache=False)
            client.cache = AnswerCache(Path(tmp) / "sim-cache")
            hf = HFExplainer("hf:smollm2", client, reader.local)
            chosen = items[:sim_features]
            before = counter.tokens
            start = time.perf_counter()
            hf.simulate_many([(t, [r.tokens for r in i.scoring()]) for t, i in zip(texts, chosen)])
            simulation_null(hf, chosen, texts, nulls[:sim_features])
            rows["simulation (hf:smollm2)"] = {
                "features": len(chosen), "seconds": time.perf_counter() - start,
                "prompts": sum((1 + len(k)) * len(i.scoring()) for i, k in zip(chosen, nulls)),
                "cached": 0, "tokens": counter.tokens - before, "failures": 0}
        counter.handle.remove()
        detection = rows["detection (hf:smollm2)"]
        ids = torch.cat([shard.token_ids for shard in store.iter_shards(layer)]).long()
        length = max(1, round(detection["tokens"] / max(1, detection["prompts"])))
        out["anchor_tokens_per_s"] = round(bare_forward(model, ids, detection["tokens"], HF_BATCH, length))
        out["anchor_length"] = length
    for row in rows.values():
        n = row["features"]
        row.update(s_per_feature=round(row["seconds"] / n, 3), prompts_per_feature=round(row["prompts"] / n, 1),
                   tokens_per_feature=round(row["tokens"] / n), seconds=round(row["seconds"], 2),
                   tokens_per_s=round(row["tokens"] / row["seconds"]) if row["tokens"] else None)
    out["scorers"] = rows
    return out


def print_costs(figures: dict) -> None:
    anchor = figures["anchor_tokens_per_s"]
    print(f"scorer model hf:smollm2 (load {figures['load_s']} s), block {figures['layer']}, {figures['n_docs']} "
          f"pang-lee documents, {figures['null_explanations']} null explanation(s) per feature, batch "
          f"{figures['batch']}; anchor: bare forward of [{figures['batch']}, {figures['anchor_length']}] blocks")
    header = ("scorer", "features", "s/feature", "prompts/feature", "tokens/feature", "tokens/s", "bare fwd tokens/s",
              "cached", "failures")
    print(f"{header[0]:<24}" + "".join(f"{h:>18}" for h in header[1:]))
    for name, row in figures["scorers"].items():
        cells = (row["features"], row["s_per_feature"], row["prompts_per_feature"], row["tokens_per_feature"],
                 row["tokens_per_s"] or "-", anchor if row["tokens"] else "-", row["cached"], row["failures"])
        print(f"{name:<24}" + "".join(f"{c!s:>18}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="A quick run (fewer documents).")
    parser.add_argument("--smollm2", action="store_true", help="Also time the hf explainer on SmolLM2-135M.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument("--yes-no", action="store_true", help="Only time P(yes) readings of SmolLM2-135M.")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32", help="--yes-no: prompts per forward pass, tried.")
    parser.add_argument("--prompts", type=int, default=64, help="--yes-no: prompts read per batch size.")
    parser.add_argument("--prompt-tokens", type=int, default=100, help="--yes-no: about this many tokens a prompt.")
    parser.add_argument("--scorers", action="store_true", help="Only the scorer cost table (hf:smollm2, pang-lee).")
    parser.add_argument("--features", type=int, default=6, help="--scorers: features scored by each scorer.")
    parser.add_argument("--sim-features", type=int, default=2, help="--scorers: features hf:smollm2 simulates.")
    parser.add_argument("--null-explanations", type=int, default=1, help="--scorers: shuffled ones per feature.")
    parser.add_argument("--docs", type=int, default=80, help="--scorers: pang-lee documents harvested.")
    args = parser.parse_args()
    if args.scorers:
        costs = scorer_costs(args.features, args.sim_features, args.null_explanations, args.docs)
        if args.json:
            print(json.dumps(costs, indent=2))
        else:
            print_costs(costs)
        return
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
