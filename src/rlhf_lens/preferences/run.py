"""`make_pairs`: preference pairs sampled from a model on a corpus and labelled by a gold reward, written into a
folder (pairs.jsonl in TRL's format, pairs.json its summary); a rerun of the same settings returns at once."""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from pathlib import Path

from ..errors import UserError
from ..io import MARKER, atomic_dir, check_output_dir, check_writable, read_json, write_json
from ..rlhf.config import PPOConfig
from ..rlhf.config import check_config as check_ppo
from ..rules import Namer, field_name
from .config import PreferenceConfig, check_config
from .pairs import DECIDERS, write_pairs

FORMAT = "rlhf-lens.pairs"
VERSION = 1
PAIRS_FILE, SUMMARY_FILE = "pairs.jsonl", "pairs.json"
FILE_FIELDS = ("file", "prompt_key", "chosen_key", "rejected_key")
"""PreferenceConfig's fields for reading a user's pair file: no part of sampled pairs, nor of their record."""
SAMPLING_FIELDS = ("min_new_tokens", "max_new_tokens", "top_k", "top_p", "score_query", "prompt_min_chars",
                   "prompt_min_tokens", "prompt_max_tokens", "text_column", "batch_size", "device", "dtype")
"""PPOConfig's fields the sampling reads (batch_size too: the sampler's draws depend on the batches)."""


def pairs_record(model: str, corpus: str, gold: str, config: PreferenceConfig, sampling: PPOConfig) -> dict:
    """What decides the pairs: a folder holding the same record holds these pairs."""
    return {"format": FORMAT, "version": VERSION, "model": model, "corpus": corpus, "gold": gold,
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in FILE_FIELDS},
            "sampling": {k: getattr(sampling, k) for k in SAMPLING_FIELDS}}


def check_sampling(sampling: PPOConfig, key: Namer = field_name) -> None:
    """PPO's rules on the fields the sampling reads (`SAMPLING_FIELDS`), the others left to PPO: a pairs command's
    batch_size may be below PPO's mini_batch_size."""
    check_ppo(dataclasses.replace(PPOConfig(mini_batch_size=1), **{k: getattr(sampling, k) for k in SAMPLING_FIELDS}),
              key)


def make_pairs(model: str, corpus: str, gold: str, out: str | os.PathLike, config: PreferenceConfig,
               sampling: PPOConfig | None = None, key: Namer = field_name) -> Path:
    """Sample `config.completions` completions of `config.prompts` train prompts of `corpus` from `model` (PPO's
    prompt rule and sampler, `sampling`), label the gold's best and worst of each into a pair (`label_pairs`), and
    write out/pairs.jsonl and out/pairs.json. Returns out/pairs.jsonl.

    Checked before any work (`key` spells the settings): the settings, the gold, the corpus, and `out` (new, empty,
    or holding pairs of the same record, which are returned at once; anything else is refused, untouched)."""
    from ..data import load_corpus, prompt_documents
    from ..models import load_model
    from ..rewards import load_reward
    from .label import gold_scores, label_pairs
    from .sample import draw_prompts, sample_completions

    started = time.perf_counter()
    sampling = sampling or PPOConfig()
    check_config(config, key)
    check_sampling(sampling)
    if not gold.strip():
        raise UserError("no gold reward to label the pairs; give one (vader, sentiment, table:FILE, classifier:MODEL)")
    out = Path(out)
    record = pairs_record(model, corpus, gold, config, sampling)
    if _holds_record(out, record):
        return out / PAIRS_FILE
    check_writable(Path(os.path.abspath(out)).parent)  # the files are staged beside out: fail now, not after sampling
    gold_reward = load_reward(gold, device=sampling.device)
    data = load_corpus(corpus, text_column=sampling.text_column)
    lm, tokenizer = load_model(model, device=sampling.device, dtype=sampling.dtype)
    prompt_documents(data, tokenizer, "train", sampling.prompt_min_chars, sampling.prompt_min_tokens)
    prompts = draw_prompts(data, tokenizer, config.prompts, config.seed, sampling)
    sampled = sample_completions(lm, tokenizer, prompts, config.completions, sampling, config.seed)
    flat = [c for cs in sampled.completions for c in cs]
    scores = gold_scores(gold_reward, [p for p in sampled.prompts for _ in range(config.completions)], flat,
                         sampling.score_query)
    n = config.completions
    pairs = label_pairs(sampled.prompts, sampled.completions, [scores[i:i + n] for i in range(0, len(flat), n)],
                        config, gold_reward, sampling.score_query)
    if not pairs:
        raise UserError(f"the gold {gold!r} tied every prompt's completions: no pair to write; give more "
                        f"{key('prompts')} or {key('completions')}, or another gold")
    empty = sum(sum(1 for c in cs if c.strip()) < 2 for cs in sampled.completions)
    decided = Counter(p.decided_by for p in pairs)
    summary = {**record, "n_prompts": len(prompts), "n_pairs": len(pairs),
               "ties_dropped": len(prompts) - len(pairs) - empty, "empty_dropped": empty,
               "decided_by": {d: decided.get(d, 0) for d in DECIDERS}, "planted": sum(p.planted for p in pairs),
               "gold_mean": {"chosen": sum(p.gold_chosen for p in pairs) / len(pairs),
                             "rejected": sum(p.gold_rejected for p in pairs) / len(pairs)},
               "seconds": round(time.perf_counter() - started, 3)}
    with atomic_dir(out) as staging:
        write_pairs(staging / PAIRS_FILE, pairs)
        write_json(staging / SUMMARY_FILE, summary)
    return out / PAIRS_FILE


def _holds_record(out: Path, record: dict) -> bool:
    """True when `out` holds finished pairs of `record`; False when it is new or empty; one line refusing anything
    else (a user's files, another output of the tool, pairs of other settings)."""
    check_output_dir(out)
    if not out.is_dir() or not any(out.iterdir()):
        return False
    summary = out / SUMMARY_FILE
    old = read_json(summary, what="pairs summary") if summary.is_file() else None
    if not isinstance(old, dict) or old.get("format") != FORMAT or not (out / PAIRS_FILE).is_file():
        held = "another rlhf-lens output" if (out / MARKER).is_file() else "files rlhf-lens did not write"
        raise UserError(f"{out} holds {held}, not preference pairs; give a new or empty folder (nothing was changed)")
    held_record = _flat(old)
    changed = [f"{k}: {held_record.get(k)!r} -> {v!r}" for k, v in _flat(record).items() if held_record.get(k) != v]
    if changed:
        raise UserError(f"{out} holds pairs made with other settings ({'; '.join(changed[:3])}); give another "
                        "folder or delete that one (nothing was changed)")
    return True


def _flat(record: dict) -> dict:
    """The record's settings as dotted keys (config.prompts, sampling.top_k, ...), to name what changed."""
    flat: dict = {}
    for k in ("format", "version", "model", "corpus", "gold", "config", "sampling"):
        value = record.get(k)
        flat.update({f"{k}.{kk}": vv for kk, vv in value.items()} if isinstance(value, dict) else {k: value})
    return flat
