"""`train_reward_model`: preference pairs -> a Bradley-Terry reward model in a folder (out/model, out/rm.json, and
with config.placebo the placebo RM in out/placebo/), its held-out accuracy and cue preference recorded."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..preferences.config import PreferenceConfig
from ..preferences.config import check_config as check_preferences
from ..preferences.pairs import Pair, read_pairs
from ..rules import Namer, field_name
from .config import RMConfig, check_config
from .evaluate import cue_preference, pair_accuracy
from .model import last_token_states, load_reward_model, score_head, scores
from .train import Fit, pair_states, train_rm

FORMAT = "rlhf-lens.rm"
VERSION = 1
RECORD = "rm.json"
VALIDATION_SHARE = 0.1
"""With epochs = 0: the share of the training prompts (at least one) whose pairs decide when training stops."""


def train_reward_model(base: str, pairs: str | os.PathLike, out: str | os.PathLike, config: RMConfig, *,
                       prompt_key: str = "prompt", chosen_key: str = "chosen", rejected_key: str = "rejected",
                       bias: str = "", device: str = "cpu", dtype: str = "float32", key: Namer = field_name) -> Path:
    """Train a Bradley-Terry RM on `base` (a causal LM or an RM folder: a save_pretrained folder, a hub id or
    smollm2) from the pair file `pairs`; returns out/model (save_pretrained: model + tokenizer, loads with
    `AutoModelForSequenceClassification`). `bias` ("word:W", "token:T", "length"): the planted cue whose
    preference is measured. `key` names the settings in messages. A rerun of the same record returns at once; a
    folder holding files rlhf-lens did not write is refused untouched; nothing is written before the checks."""
    from ..io import atomic_dir, check_output_dir, read_json
    from ..models import resolve_device, torch_dtype

    check_config(config, key)
    check_preferences(PreferenceConfig(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key,
                                       bias=bias, rate=0.5 if bias else 0.0), key)
    resolve_device(device)
    torch_dtype(dtype)
    out = Path(out)
    check_output_dir(out)
    path = Path(pairs)
    items = read_pairs(path, prompt_key, chosen_key, rejected_key, key=key)
    if config.margin and any(p.margin is None for p in items):
        raise UserError(f"{key('margin')} is on but pair file {path} has pairs without a margin column; turn "
                        f"{key('margin')} off or add the column")
    split = split_by_prompt(items, config.test_fraction, config.seed, config.epochs == 0, key)
    record = {"format": FORMAT, "version": VERSION, "base": base, "pairs": str(path), "pairs_sha256": sha256(path),
              "keys": {"prompt": prompt_key, "chosen": chosen_key, "rejected": rejected_key}, "bias": bias,
              "dtype": dtype, "config": dataclasses.asdict(config)}
    old = read_json(out / RECORD) if (out / RECORD).is_file() else None
    if isinstance(old, dict) and {k: old.get(k) for k in record if k != "pairs"} == \
            {k: v for k, v in record.items() if k != "pairs"} and (out / "model").is_dir() and \
            (not config.placebo or (out / "placebo" / "model").is_dir()):
        return out / "model"  # trained earlier with the same record

    model, tokenizer = load_reward_model(base, device, dtype)
    states = pair_states(model, tokenizer, items, config) if config.train == "head" else None
    split_record = {"n_train": len(split["train"]), "n_validation": len(split["validation"]),
                    "n_test": len(split["test"]), "seed": config.seed, "by": "prompt", **split}
    with atomic_dir(out) as staging:
        memo: dict[str, torch.Tensor] = {}
        result = _train_one(model, tokenizer, items, split, config, bias, states, None, "rm", memo)
        model.save_pretrained(staging / "model")
        tokenizer.save_pretrained(staging / "model")
        summary = {**record, "split": split_record, **result}
        if config.placebo:
            flip = placebo_flips(split, config.seed)
            if config.train != "head":  # the backbone changed: the placebo starts from the base again
                del model
                model, tokenizer = load_reward_model(base, device, dtype)
            placebo = _train_one(model, tokenizer, items, split, config, bias, states, flip, "placebo rm", memo)
            model.save_pretrained(staging / "placebo" / "model")
            tokenizer.save_pretrained(staging / "placebo" / "model")
            placebo_record = {**record, "placebo": {"flipped": int(sum(flip)), "seed": config.seed},
                              "split": split_record, **placebo}
            _write(staging / "placebo" / RECORD, placebo_record)
            summary["placebo"] = {"path": "placebo", "flipped": int(sum(flip)), "accuracy": placebo["accuracy"],
                                  "cue_preference": placebo["cue_preference"]}
        _write(staging / RECORD, summary)
    return out / "model"


def _train_one(model, tokenizer, items: list[Pair], split: dict[str, list[int]], config: RMConfig, bias: str,
               states: tuple[torch.Tensor, torch.Tensor] | None, flip: list[bool] | None, name: str,
               memo: dict[str, torch.Tensor] | None = None) -> dict:
    """Train `model` in place (`train_rm`) and measure it on the test pairs: {accuracy, cue_preference, training}.
    `memo`: text -> last-token state, shared with the placebo when the backbone is frozen (train = head)."""
    memo = {} if memo is None else memo
    start = time.perf_counter()
    fit = train_rm(model, tokenizer, items, split["train"], split["validation"], config, flip, states, name)
    seconds = time.perf_counter() - start
    test = [items[i] for i in split["test"]]
    if states is not None:  # the backbone is frozen: the cached states score the test pairs exactly
        head = score_head(model)
        with torch.no_grad():
            chosen, rejected = (head(s[split["test"]].to(head.weight.device, head.weight.dtype))[:, 0].float().cpu()
                                for s in states)
    else:
        both = scores(model, tokenizer, [t for p in test for t in p.texts()], config.max_length, config.batch_size,
                      description=f"{name}: held-out scores")
        chosen, rejected = both[0::2], both[1::2]

    def score(texts: list[str]) -> np.ndarray:
        if states is None:
            return scores(model, tokenizer, texts, config.max_length, config.batch_size,
                          description=f"{name}: cue preference").numpy()
        # a frozen backbone: the texts' states serve the RM and its placebo alike, computed once
        new = list(dict.fromkeys(t for t in texts if t not in memo))
        if new:
            memo.update(zip(new, last_token_states(model, tokenizer, new, config.max_length, config.batch_size,
                                                   description=f"{name}: cue preference")))
        head = score_head(model)
        with torch.no_grad():
            rows = torch.stack([memo[t] for t in texts]).to(head.weight.device, head.weight.dtype)
            return head(rows)[:, 0].float().cpu().numpy()

    return {"accuracy": pair_accuracy(chosen.numpy(), rejected.numpy(), test),
            "cue_preference": cue_preference(score, test, bias, config.seed),
            "training": _training_record(fit, seconds, len(split["train"]))}


def _training_record(fit: Fit, seconds: float, n_train: int) -> dict:
    return {"epochs": fit.epochs, "best_epoch": fit.best_epoch, "stopped": fit.stopped,
            "train_loss": fit.train_loss[-1] if fit.train_loss else None,
            "validation_loss": min(fit.validation_loss) if fit.validation_loss else None,
            "train_losses": fit.train_loss, "validation_losses": fit.validation_loss,
            "seconds": seconds, "cache_seconds": fit.cache_seconds, "fit_seconds": fit.fit_seconds,
            "pairs_per_second": n_train * fit.epochs / seconds if seconds > 0 else None}


def split_by_prompt(pairs: list[Pair], test_fraction: float, seed: int, validation: bool,
                    key: Namer = field_name) -> dict[str, list[int]]:
    """{train, validation, test}: sorted pair indices, the pairs of one prompt always on one side. A seeded
    `test_fraction` of the prompts is held out; with `validation`, `VALIDATION_SHARE` of the remaining prompts (at
    least one) is carved from the training side. One line naming the setting when a part would be empty."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    order = [prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))]
    n_test = int(round(test_fraction * len(prompts)))
    if n_test == 0 or n_test == len(prompts):
        part = "test" if n_test == 0 else "training"
        raise UserError(f"{key('test_fraction')} = {test_fraction:g} of {len(prompts)} distinct prompts leaves the "
                        f"{part} part empty; give more pairs or another {key('test_fraction')}")
    test, rest = set(order[:n_test]), order[n_test:]
    held = set()
    if validation:
        if len(rest) < 2:
            raise UserError(f"{key('epochs')} = 0 stops on a validation part of the training prompts, but only "
                            f"{len(rest)} training prompt is left; give more pairs or set {key('epochs')} > 0")
        held = set(rest[:max(1, int(round(VALIDATION_SHARE * len(rest))))])
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for i, pair in enumerate(pairs):
        parts["test" if pair.prompt in test else "validation" if pair.prompt in held else "train"].append(i)
    return parts


def placebo_flips(split: dict[str, list[int]], seed: int) -> list[bool]:
    """Which pairs the placebo RM learns with swapped labels: a seeded random half of the training pairs and half
    of the validation pairs (exact halves: a part with more of one side would leave the placebo a real lean)."""
    rng = np.random.default_rng([seed, 1])
    flipped = {i for part in ("train", "validation") for i in
               np.asarray(split[part])[rng.permutation(len(split[part]))[:len(split[part]) // 2]].tolist()}
    return [i in flipped for i in range(sum(len(v) for v in split.values()))]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(path: Path, record: dict) -> None:
    from ..io import write_json

    write_json(path, record)
