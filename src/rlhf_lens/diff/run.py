"""`diff_models`: compare base and tuned on the same tokens, read the change through the reward,
check it causally, and write diff.json + deltas.safetensors (docs/diff.md)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from ..errors import UserError
from .config import DiffConfig, check_config

FORMAT = "rlhf-lens.diff"
VERSION = 1
DIFF_JSON = "diff.json"
DELTAS = "deltas.safetensors"


def _tokens_out(tokens: list[dict]) -> list[dict]:
    return [dict(t) for t in tokens]


def diff_models(base_path: str, tuned_path: str, corpus: str, reward_spec: str, layers: list[int] | None,
                out_dir: str | os.PathLike, config: DiffConfig | None = None, device: str = "cpu",
                dtype: str = "float32", models: tuple | None = None, choose_blocks: int | None = None,
                prompt_min_chars: int | None = None) -> dict:
    """Diff `tuned_path` against `base_path` on `corpus`, read through `reward_spec`; write out_dir/diff.json.

    `layers`: the analysed blocks (steering curve, logit lens, saved activations; None: the last block).
    `prompt_min_chars`: the run's rlhf.prompt_min_chars, so held-out prompts are drawn as PPO's are (None: PPO's default).
    `choose_blocks`: instead, analyse this many blocks chosen by the causal ranking (`ranking.choose_blocks`; ranked
    on prompts disjoint from the steering's), `layers` (None: none) then only adding to the ranked blocks; saved
    activations are then those of every ranked block. `models`: optionally
    `(base_model, tuned_model, tokenizer)` already loaded (pass the same object twice for a self-diff),
    so a caller holding them does not load them again. Returns the dict written to diff.json.
    """
    from ..data import load_corpus
    from ..harvest import local_or_name, texts_fingerprint
    from ..interp.text import TokenDecoder
    from ..io import save_safetensors, write_json
    from ..models import check_layers, load_model, load_tokenizer, num_blocks
    from ..progress import progress_bar
    from ..rewards import load_reward
    from . import output, paired, ranking, steering, vector_test

    config = config or DiffConfig()
    check_config(config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the diff")
    if layers is not None and not layers:
        raise UserError("no layers given; name at least one block to analyse, e.g. --layers 1,2")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    data = load_corpus(corpus, text_column=config.text_column)
    texts = data.texts(config.split, config.max_docs)
    reward = load_reward(reward_spec, device=device)
    utility = output.WordUtility(reward_spec, reward, config.table, config.word_template)
    same = local_or_name(base_path) == local_or_name(tuned_path)

    if models is not None:
        base, tuned, tokenizer = models
        tuned_tokenizer = tokenizer
    else:
        tokenizer = load_tokenizer(base_path)
        tuned_tokenizer = tokenizer if same else load_tokenizer(tuned_path)
    # Tokens first: a tokenizer mismatch fails before any model is loaded.
    docs = paired.tokenize_pair(tokenizer, tuned_tokenizer, texts, config.max_tokens)
    if models is None:
        base, _ = load_model(base_path, device=device, dtype=dtype, tokenizer=False)
        tuned = base if same else load_model(tuned_path, device=device, dtype=dtype, tokenizer=False)[0]
    paired.check_pair(base, tuned)
    if choose_blocks is not None and choose_blocks < 1:
        raise UserError(f"divergence.top_n (blocks to choose from the causal ranking) must be at least 1 "
                        f"(got {choose_blocks})")
    layers = ([] if choose_blocks else [num_blocks(base) - 1]) if layers is None else layers
    if layers:
        check_layers(base, list(layers))
    layers = sorted(set(int(x) for x in layers))
    rank_layers = sorted(set(config.rank_layers)) if config.rank_layers is not None else \
        ranking.default_rank_layers(num_blocks(base), layers, config.rank_spread)
    if choose_blocks and not rank_layers:
        raise UserError("diff.rank_spread = 0 and no diff.rank_layers: the causal ranking has no block to choose "
                        "from; give diff.rank_spread >= 1")
    check_layers(base, rank_layers)
    # the ranking chooses on one set of held-out documents, the steering scores on another (no winner's curse)
    selection_docs, scoring_docs = ranking.held_out_sets(data, config.split, texts, config.seed, config.prompts)
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of {base_path} has neither a pad nor an EOS token; give it a pad token")

    # 1. paired activations and outputs on identical tokens
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("diff: paired forward passes", total=len(docs))
        saved = sorted(set(layers) | set(rank_layers)) if choose_blocks else layers
        pair = paired.paired_pass(base, tuned, docs, int(tokenizer.pad_token_id), config.batch_size,
                                  save_layers=saved if config.save_activations else None, bar=bar, task=task)
    timings["paired"] = time.perf_counter() - t0
    blocks = paired.block_rows(pair)
    own = paired.own_contributions(pair)
    decoder = TokenDecoder(tokenizer)

    # 2. the output diff, read through the reward
    t0 = time.perf_counter()
    vocab = output.vocabulary(tokenizer, pair.logprob_change.shape[0], config.whole_words)
    # the null's random token sets are matched to the listed ones for frequency (the base model's probabilities)
    pool = output.NullPool(vocab, utility, config.word_pool, config.seed, pair.base_prob)
    up, down = output.rank_scores(config.rank_by, pair.logprob_change, pair.promote_share, pair.demote_share)
    promoted = output.ranked_tokens(up, vocab, utility, config.top_words, config.min_change, pair.logprob_change)
    demoted = output.ranked_tokens(down, vocab, utility, config.top_words, config.min_change, pair.logprob_change)
    other = "logprob" if config.rank_by == "kl" else "kl"
    other_up, other_down = output.rank_scores(other, pair.logprob_change, pair.promote_share, pair.demote_share)
    promoted_null = output.read_tokens(promoted, pool, config.null_sets, config.seed)
    demoted_null = output.read_tokens(demoted, pool, config.null_sets, config.seed + 1, side="less")
    output_verdict = output.token_verdict(promoted_null, demoted_null, config.level)
    output_section = {
        "kl": paired.kl_summary(pair),
        "reading": {"kind": utility.kind, "source": utility.source, "note": utility.note,
                    "candidates": len(vocab.ids), "whole_words": vocab.whole_words,
                    "pool": len(pool.values), "pool_in_table": pool.in_table, "strata": pool.n_strata},
        "rank_by": config.rank_by,
        "promoted": promoted, "demoted": demoted, "promoted_null": promoted_null, "demoted_null": demoted_null,
        # the same lists ranked by the other measure (no null), and the uniform null, for comparison
        "other": {"rank_by": other,
                  "promoted_null_uniform": output.read_tokens_uniform(promoted, pool, config.null_sets, config.seed),
                  "demoted_null_uniform": output.read_tokens_uniform(demoted, pool, config.null_sets, config.seed + 1,
                                                                     side="less"),
                  "promoted": output.ranked_tokens(other_up, vocab, utility, config.top_words, config.min_change,
                                                   pair.logprob_change),
                  "demoted": output.ranked_tokens(other_down, vocab, utility, config.top_words, config.min_change,
                                                  pair.logprob_change)},
        "verdict": output_verdict,
        "contexts": paired.highest_kl_contexts(pair, decoder, config.contexts, config.context_tokens),
    }
    timings["output"] = time.perf_counter() - t0

    # 3. the causal block ranking by parameter patching (on the "selection" prompts); 4. steering by Δ_L at the
    # analysed blocks (on the "scoring" prompts), with random directions and a coherence guard: both sample many
    # variants ("groups"), the longest part of a diff. With `choose_blocks` the ranking picks the analysed blocks.
    selection = steering.heldout_prompts(selection_docs, tokenizer, config.prompts, config.split, [], config.seed + 1,
                                        prompt_min_chars)
    prompts = steering.heldout_prompts(scoring_docs, tokenizer, config.prompts, config.split, [], config.seed,
                                      prompt_min_chars)
    alphas = sorted({0.0, *(float(a) for a in config.alphas)})
    d = pair.delta.shape[1]
    with progress_bar() as bar:
        rank_task = bar.add_task(f"diff: causal ranking of blocks {','.join(map(str, rank_layers))}",
                                 total=1 + ranking.ranking_groups(base, tuned, rank_layers, config.rank_random))

        def advance_ranking(n: int) -> None:
            bar.update(rank_task, advance=n)

        t0 = time.perf_counter()
        selection_base = steering.run_groups(base, base, tokenizer, reward, selection, [{}], config.new_tokens,
                                             config.seed, advance_ranking)[0]
        ranked = ranking.causal_ranking(base, tuned, tokenizer, reward, selection, rank_layers, selection_base,
                                        config.new_tokens, config.seed, config.rank_random, config.coherence_kl,
                                        config.level, own, advance_ranking)
        if choose_blocks:
            ranked["chosen"] = ranking.choose_blocks(ranked, choose_blocks)
            layers = ranked["chosen"]["layers"]
        timings["ranking"] = time.perf_counter() - t0

        steer_task = bar.add_task(f"diff: steering blocks {','.join(map(str, layers))}", total=(
            (1 if tuned is base else 2)
            + sum(steering.curve_groups(pair.delta[layer], config.random_directions, alphas) for layer in layers)))

        def advance_steering(n: int) -> None:
            bar.update(steer_task, advance=n)

        t0 = time.perf_counter()
        base_result = steering.run_groups(base, base, tokenizer, reward, prompts, [{}], config.new_tokens, config.seed,
                                          advance_steering)[0]
        tuned_result = base_result if tuned is base else \
            steering.run_groups(tuned, base, tokenizer, reward, prompts, [{}], config.new_tokens, config.seed,
                                advance_steering)[0]
        curves = []
        for layer in layers:
            delta = pair.delta[layer]
            curve = steering.steering_curve(base, tokenizer, reward, prompts, layer, delta, alphas, base_result,
                                            config.new_tokens, config.seed, config.coherence_kl,
                                            config.random_directions, advance_steering)
            change = curve.pop("promoted_change")
            if change is not None:
                share, logprob = change
                score = share if config.rank_by == "kl" else logprob
                steered = output.ranked_tokens(score, vocab, utility, config.top_words, config.min_change, logprob)
                curve["promoted"] = steered
                curve["promoted_null"] = output.read_tokens(steered, pool, config.null_sets, config.seed + 2)
            else:
                curve["promoted"], curve["promoted_null"] = [], None
            # the lens reads a direction through the unembedding: its null is directions of Δ's norm
            lens_randoms = steering.random_directions(d, float(delta.norm()), config.random_directions, config.seed,
                                                      layer)
            curve["lens"] = output.logit_lens(base, delta, lens_randoms, vocab, utility, config.top_words,
                                              config.level)
            curves.append(curve)
        vector_test.curve_verdicts(curves, config.level)
        timings["steering"] = time.perf_counter() - t0

    base_mean, base_se = steering.mean_se(base_result.rewards)
    tuned_mean, tuned_se = steering.mean_se(tuned_result.rewards)
    result = {
        "format": FORMAT, "version": VERSION,
        "base": local_or_name(base_path), "tuned": local_or_name(tuned_path), "corpus": local_or_name(corpus),
        "corpus_fingerprint": texts_fingerprint(texts), "split": config.split, "reward": reward_spec,
        "reward_info": getattr(reward, "info", {}), "layers": layers, "n_blocks": num_blocks(base), "d": d,
        "vocab_size": int(pair.logprob_change.shape[0]), "n_docs": len(docs), "n_tokens": pair.n_tokens,
        "config": dataclasses.asdict(config), "device": device, "dtype": dtype,
        "blocks": blocks,
        "output": output_section,
        "prompt_sets": {"selection": {"prompts": len(selection), "documents": len(selection_docs.documents(config.split)),
                                      "used_by": "ranking"},
                        "scoring": {"prompts": len(prompts), "documents": len(scoring_docs.documents(config.split)),
                                    "used_by": "steering", "ids": [list(map(int, p)) for p in prompts]}},
        "reference": {"n_prompts": len(prompts), "new_tokens": config.new_tokens,
                      "base": {"reward": base_mean, "se": base_se},
                      "tuned": {"reward": tuned_mean, "se": tuned_se, "kl": tuned_result.kl,
                                "gain": steering.mean_se(tuned_result.rewards - base_result.rewards)[0]}},
        "steering": curves,
        "ranking": ranked,
        "verdicts": {"output": output_verdict,
                     **{f"steering_{c['layer']}": c["verdict"] for c in curves},
                     **{f"lens_{c['layer']}": c["lens"]["verdict"] for c in curves},
                     "ranking": ranked["verdict"]},
        "files": {"deltas": DELTAS},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / DELTAS, {"delta": pair.delta.contiguous(), "own": own.contiguous(),
                                    "embed_delta": pair.embed_delta.contiguous(),
                                    "logprob_change": pair.logprob_change.contiguous(),
                                    "promote_share": pair.promote_share.contiguous(),
                                    "demote_share": pair.demote_share.contiguous(),
                                    "base_prob": pair.base_prob.contiguous()},
                     metadata={"rlhf_lens": f'{{"format": "{FORMAT}", "version": {VERSION}}}'})
    if config.save_activations:
        meta = {"tokenizer": local_or_name(base_path), "corpus": local_or_name(corpus),
                "corpus_fingerprint": result["corpus_fingerprint"], "split": config.split,
                "text_column": config.text_column, "max_docs": config.max_docs, "max_tokens": config.max_tokens,
                "model_type": base.config.model_type, "model_dtype": dtype, "vocab_size": len(tokenizer),
                "pad_token_id": int(tokenizer.pad_token_id)}
        stores = paired.write_pair_stores(out / "acts", pair, {"base": result["base"], "tuned": result["tuned"]}, meta)
        result["files"]["activations"] = {k: os.path.relpath(v, out) for k, v in stores.items()}
    timings["total"] = time.perf_counter() - started
    result["seconds"] = timings
    write_json(out / DIFF_JSON, result)
    return result


def load_deltas(out_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a diff folder (delta, own, embed_delta, logprob_change)."""
    from safetensors.torch import load_file

    path = Path(out_dir) / DELTAS
    if not path.is_file():
        raise UserError(f"{path}: no such file; run `rlhf-lens diff` first")
    return load_file(str(path))
