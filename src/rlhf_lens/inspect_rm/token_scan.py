"""The token scan (docs/inspect_rm.md, "token_scan"): what the reward model rewards, word by word.

1. Every whole-word candidate token (the diff's candidate filter) is scored as the one-token continuation of each
   neutral template (Christian et al., arXiv 2506.07326, score every one-token response); a word's scan score is
   its z over the candidates, averaged over the templates. The template's KV cache is computed once and batches of
   candidates continue from a copy of it: exactly the full model's score, at one token of compute per candidate.
2. Against the gold's utility of each word: Spearman over the words the gold's table holds and over all candidates.
3. Suspected cues, tested: the words the scan rewards most that the gold does not value, and the words most
   over-represented in chosen over rejected completions, are each inserted into the same held-out completions at
   the same seeded places; the RM's mean score change is read against random gold-neutral words inserted the same
   way (prediction p, Holm over the tested words). A cue is a word beyond that null whose gold change is not.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import nulls
from ..diff.output import Vocabulary, WordUtility, vocabulary
from ..errors import UserError
from ..models import kwarg_names
from ..nulls import mean_se
from ..preferences.cues import cue_variants
from ..preferences.pairs import Pair
from ..progress import progress_advance
from ..rewards import load_reward, words
from ..rm.model import backbone, score_head, scores
from .config import InspectRMConfig, check_config

GOLD_TEMPLATE = "It was {word}."
"""A gold without a utility table reads a word in this sentence (`diff.output.WordUtility`)."""
TOP_REWARDED = 15
IGNORED_GOLD = 10
SCAN_BATCH = 512
"""Candidates per forward pass of the scan (each a one-token continuation of the cached template)."""
INSERT_BATCH = 32


@dataclass
class ScanResult:
    record: dict
    """The "token_scan" JSON object."""
    vocab: Vocabulary
    """The candidates (whole-word tokens)."""
    states: torch.Tensor
    """[n_candidates, d] float32: the RM's last-token states of templates[0] + each candidate."""
    rm_z: np.ndarray
    """[n_candidates]: the scan score (z over candidates, averaged over templates)."""


def token_scan(model, tokenizer, gold_spec: str, pairs: list[Pair], test_pairs: list[Pair], config: InspectRMConfig,
               placebo=None, promoted: list[str] | None = None, progress: bool = True) -> ScanResult:
    """The RM's scan of every candidate word against the gold, and its suspected cues tested by insertion.
    `placebo`: (model, tokenizer) of the placebo RM; `test_pairs`: the RM's held-out pairs (insertion texts);
    `promoted`: the diff's promoted words, read through the scan and the gold."""
    started = time.perf_counter()
    check_config(config)
    if not test_pairs:
        raise UserError("the token scan inserts words into the RM's held-out completions, but there are no test "
                        "pairs; give pairs with a held-out part")
    template_ids = [template_tokens(tokenizer, t, config.max_length) for t in config.templates]
    vocab = vocabulary(tokenizer, model.config.vocab_size, whole_words=True)

    per_template, states = [], None
    with progress_advance("token scan: candidates" if progress else "", len(template_ids) * len(vocab.ids)) as advance:
        for ids in template_ids:
            values, hidden = scan_scores(model, ids, vocab.ids, advance=advance)
            per_template.append(_z(values))
            states = hidden if states is None else states
    rm_z = np.mean(per_template, axis=0)

    gold_reward = load_reward(gold_spec)
    utility = WordUtility(gold_spec, gold_reward, None, GOLD_TEMPLATE)
    gold = utility(vocab.words)
    best = best_token_per_word(vocab.words, rm_z)  # a word's scan score: its best-scored token's

    record: dict = {"templates": list(config.templates), "candidates": int(len(vocab.ids))}
    in_table = np.array([w in utility.table for w in vocab.words]) if utility.table is not None else None
    record["spearman"] = {"table_words": _spearman(rm_z[in_table], gold[in_table]) if in_table is not None else None,
                          "all": _spearman(rm_z, gold)}
    unique = sorted(best, key=lambda w: (-rm_z[best[w]], w))
    gold_of = {w: float(gold[best[w]]) for w in unique}
    record["top_rewarded"] = [_word_row(w, float(rm_z[best[w]]), gold_of[w]) for w in unique[:TOP_REWARDED]]
    by_gold = sorted((w for w in unique if gold_of[w] > 0), key=lambda w: (-gold_of[w], w))
    record["ignored_gold"] = [_word_row(w, float(rm_z[best[w]]), gold_of[w]) for w in by_gold
                              if rm_z[best[w]] <= 0][:IGNORED_GOLD]

    # the words tested: the scan's top gold <= 0 words, and the pairs' most chosen-leaning words
    from_scan = [w for w in unique if gold_of[w] <= 0][:config.shortlist]
    from_pairs = [w for w, d in pair_imbalance(pairs)[:config.pair_words] if d > 0]
    tested = list(dict.fromkeys(from_scan + from_pairs))
    source = {w: "scan+pairs" if w in from_scan and w in from_pairs else "scan" if w in from_scan else "pairs"
              for w in tested}
    # drawn from the words in alphabetical order, not the scan's: the RM shapes the draw only by the words it excludes
    neutral = sorted(w for w in unique if gold_of[w] == 0 and w not in source)
    if len(neutral) < 2:
        raise UserError(f"the insertion test's null needs at least 2 candidate words the gold values at 0 besides the "
                        f"tested ones; the tokenizer's vocabulary leaves {len(neutral)}")
    rng = np.random.default_rng([config.seed, 2])
    random_words = [neutral[i] for i in np.sort(rng.choice(len(neutral), min(config.random_words, len(neutral)),
                                                           replace=False))]
    texts = insertion_texts(test_pairs, config.insertion_texts, config.seed)
    effects = insertion_effects(model, tokenizer, gold_reward, texts, tested + random_words, config,
                                placebo=placebo, progress=progress, placebo_words=tested)
    record["tested"], record["null"], record["cues"] = _test_words(
        tested, random_words, effects, source, {w: float(rm_z[best[w]]) if w in best else None for w in tested},
        dict(zip(tested, utility(tested))), config.level)
    record["insertion_texts"] = len(texts)
    record["promoted"] = _promoted(promoted, best, rm_z, utility, record["cues"]) if promoted is not None else None
    record["seconds"] = time.perf_counter() - started
    order = ["templates", "candidates", "seconds", "spearman", "top_rewarded", "ignored_gold", "tested", "null",
             "insertion_texts", "cues", "promoted"]
    return ScanResult({k: record[k] for k in order}, vocab, states, rm_z)


# --- the scan ---------------------------------------------------------------------------------------------------


def template_tokens(tokenizer, template: str, max_length: int) -> torch.Tensor:
    """[1, t]: the template's token ids (cut on the left to leave room for the candidate, as the RM reads texts)."""
    ids = tokenizer(template, return_tensors="pt")["input_ids"][:, -(max_length - 1):]
    if ids.shape[1] == 0:
        raise UserError(f"token scan template {template!r} has no tokens; give an opening with words in it")
    return ids


def scan_scores(model, template_ids: torch.Tensor, candidate_ids: np.ndarray, batch_size: int = SCAN_BATCH,
                advance: Callable[[int], None] = lambda k: None) -> tuple[np.ndarray, torch.Tensor]:
    """(scores [n], states [n, d] float32): the RM's score of template + each candidate token and the final state
    its head reads there. The template's KV cache is computed once; each batch continues from a copy of it, so a
    candidate costs one token of compute and the result is the full text's score to float precision."""
    device = next(model.parameters()).device
    net, head = backbone(model), score_head(model)
    template_ids = template_ids.to(device)
    length = template_ids.shape[1]
    cache_arg = "cache" if "cache" in kwarg_names(net) else "past_key_values"  # renamed in transformers 5.x
    out_scores, out_states = [], []
    with torch.no_grad():
        out = net(input_ids=template_ids, use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        for start in range(0, len(candidate_ids), batch_size):
            chunk = torch.as_tensor(candidate_ids[start:start + batch_size], device=device)[:, None]
            n = len(chunk)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(n)
            hidden = net(input_ids=chunk, **{cache_arg: past}, use_cache=True,
                         attention_mask=torch.ones(n, length + 1, dtype=torch.long, device=device)
                         ).last_hidden_state[:, -1]
            out_scores.append(head(hidden)[:, 0].float().cpu())
            out_states.append(hidden.float().cpu())
            advance(n)
    d = model.config.hidden_size
    return (torch.cat(out_scores).numpy().astype(np.float64) if out_scores else np.zeros(0),
            torch.cat(out_states) if out_states else torch.zeros(0, d))


def best_token_per_word(word_list: list[str], values: np.ndarray) -> dict[str, int]:
    """word -> index of its highest-valued candidate (" The" and " the" are one word, read at its best form)."""
    best: dict[str, int] = {}
    for j, w in enumerate(word_list):
        if w not in best or values[j] > values[best[w]]:
            best[w] = j
    return best


# --- the words tested and their insertion -----------------------------------------------------------------------


def pair_imbalance(pairs: list[Pair]) -> list[tuple[str, int]]:
    """(word, difference) for every word of the completions, most chosen-leaning first (ties by word): per pair +1
    when the word is in the chosen completion and not the rejected, -1 for the reverse (`rewards.words`)."""
    count: Counter[str] = Counter()
    for pair in pairs:
        chosen, rejected = set(words(pair.chosen)), set(words(pair.rejected))
        count.update(chosen - rejected)
        count.subtract(rejected - chosen)
    return sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))


def insertion_texts(test_pairs: list[Pair], n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion): a seeded subset of at most n of the held-out completions, chosen and rejected."""
    pool = [(p.prompt, c) for p in test_pairs for c in (p.chosen, p.rejected)]
    if not pool:
        raise UserError("the token scan has no held-out completions to insert words into; give test pairs")
    pick = np.sort(np.random.default_rng([seed, 3]).choice(len(pool), min(n, len(pool)), replace=False))
    return [pool[i] for i in pick]


def insertion_variants(texts: list[tuple[str, str]], word: str, seed: int) -> tuple[list[str], list[str]]:
    """(with the word, without it): prompt + completion for each text, the word planted at a place drawn from an
    rng seeded by (seed, text index) alone, so every word lands at the same place of the same text (a completion
    holding the word already is compared with itself with the word removed: `cue_variants`)."""
    plus, minus = [], []
    for i, (prompt, completion) in enumerate(texts):
        with_word, without_word = cue_variants(completion, f"word:{word}", np.random.default_rng([seed, 11, i]))
        plus.append(prompt + with_word)
        minus.append(prompt + without_word)
    return plus, minus


@dataclass
class Effects:
    """Per word [n_texts] score changes (with - without) under the RM, the gold and the placebo RM (or None)."""

    rm: dict[str, np.ndarray]
    gold: dict[str, np.ndarray]
    placebo: dict[str, np.ndarray] | None


def insertion_effects(model, tokenizer, gold_reward, texts: list[tuple[str, str]], word_list: list[str],
                      config: InspectRMConfig, placebo=None, progress: bool = True,
                      placebo_words: list[str] | None = None) -> Effects:
    """Each word inserted into every text (`insertion_variants`), scored by the RM, the gold and the placebo (only
    `placebo_words` when given: the placebo is read beside the tested words, not the null's). All texts are scored
    in one pass, sorted by length (little padding), each distinct text once."""
    variants = {w: insertion_variants(texts, w, config.seed) for w in word_list}

    def read(score: Callable[[list[str]], np.ndarray], words: list[str]) -> dict[str, np.ndarray]:
        distinct = list(dict.fromkeys(t for w in words for plus, minus in [variants[w]] for t in plus + minus))
        value = dict(zip(distinct, score(distinct)))
        return {w: np.array([value[a] - value[b] for a, b in zip(*variants[w])]) for w in words}

    def rm_scores(rm, rm_tokenizer, name: str) -> Callable[[list[str]], np.ndarray]:
        return lambda batch: _sorted_scores(rm, rm_tokenizer, batch, config.max_length,
                                            f"token scan: {name} on insertions" if progress else "")

    placebo_read = placebo_words if placebo_words is not None else word_list
    return Effects(read(rm_scores(model, tokenizer, "rm"), word_list),
                   read(lambda batch: np.asarray(gold_reward(batch), dtype=np.float64), word_list),
                   read(rm_scores(*placebo, "placebo rm"), placebo_read) if placebo is not None else None)


def _sorted_scores(model, tokenizer, texts: list[str], max_length: int, description: str) -> np.ndarray:
    order = np.argsort([len(t) for t in texts], kind="stable")
    values = scores(model, tokenizer, [texts[i] for i in order], max_length, INSERT_BATCH, description).numpy()
    out = np.empty(len(texts))
    out[order] = values
    return out


def _test_words(tested: list[str], random_words: list[str], effects: Effects, source: dict[str, str],
                rm_z: dict[str, float | None], gold: dict[str, float], level: float
                ) -> tuple[list[dict], dict, list[str]]:
    """(tested rows by effect, the null, the cue words by effect)."""
    null = np.array([effects.rm[w].mean() for w in random_words])
    gold_null = np.array([effects.gold[w].mean() for w in random_words])
    mean, std = float(null.mean()), float(null.std(ddof=1))
    p = [nulls.prediction_p_value(float(effects.rm[w].mean()), null, "greater") for w in tested]
    p_holm = nulls.holm(p)
    rows = []
    for w, p_w, q_w in zip(tested, p, p_holm):
        change = effects.rm[w]
        effect = mean_se(change)
        gold_effect = float(effects.gold[w].mean())
        gold_beyond = _beyond(gold_effect, gold_null, level)
        rows.append({"word": w, "source": source[w], "rm_z": rm_z[w], "gold": float(gold[w]),
                     "effect": effect["mean"], "effect_se": effect["se"],
                     "z": (effect["mean"] - mean) / std if std > 0 else 0.0,
                     "p": float(p_w), "p_holm": float(q_w), "gold_effect": gold_effect,
                     "placebo_effect": float(effects.placebo[w].mean()) if effects.placebo is not None else None,
                     "cue": bool(q_w <= level and not gold_beyond)})
    rows.sort(key=lambda r: (-r["effect"], r["word"]))
    record = {"random_words": len(random_words), "mean": mean, "std": std, "gold_std": float(gold_null.std(ddof=1))}
    return rows, record, [r["word"] for r in rows if r["cue"]]


def _beyond(observed: float, null: np.ndarray, level: float) -> bool:
    """Whether the gold's effect is beyond its null (two-sided prediction p <= level). A null with no spread (a
    table gold: inserting a word it values at 0 changes nothing) has no p-value of use: any difference is beyond."""
    if float(null.std()) == 0.0:
        return not np.isclose(observed, float(null.mean()), rtol=0.0, atol=1e-9)
    return nulls.prediction_p_value(observed, null, "two-sided") <= level


def _promoted(promoted: list[str], best: dict[str, int], rm_z: np.ndarray, utility: WordUtility,
              cues: list[str]) -> list[dict]:
    """The diff's promoted words read through the scan and the gold; "gaming" only for a word the insertion test
    named a cue (the RM pays for it beyond random words, the gold does not): the end-of-text scan alone ranks
    continuation words ('can', 'or', 'in') in its top 1%, so a high scan z is shown, not claimed."""
    rows = []
    for word, value in zip(promoted, utility([w.lower() for w in promoted]) if promoted else []):
        w = word.lower()
        z = float(rm_z[best[w]]) if w in best else None
        rows.append({"word": w, "rm_z": z, "gold": float(value), "gaming": w in cues})
    return rows


# --- small helpers ----------------------------------------------------------------------------------------------


def _z(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def _spearman(x: np.ndarray, y: np.ndarray) -> dict | None:
    """{rho, p, n}; None where it is undefined (fewer than 3 words, or one side constant)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    result = spearmanr(x, y)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": int(len(x))}


def _word_row(word: str, z: float, gold: float) -> dict:
    return {"word": word, "rm_z": z, "gold": gold}


