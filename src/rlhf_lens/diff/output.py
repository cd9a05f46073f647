"""Reading a change through the reward: promoted/demoted tokens, their utility, and its null.

A token's utility is U(word) of the one word it decodes to, looked up in the reward's utility
table (vader, table:FILE, or `DiffConfig.table`). For a reward without a table (a classifier,
the sentiment regression), a word's utility is reward(template with the word) minus reward(template
with no word): how the reward itself reads that word in a neutral sentence.

The null of a set of k tokens is the mean utility of `null_sets` random sets of k tokens drawn from
the same candidate vocabulary (for a template reading: from a seeded pool of `word_pool` candidates,
each scored once), matched for frequency: the candidates are cut into strata of the base model's log
mean next-token probability (percentiles), and a random set takes as many tokens from each as the observed
set has (frequent words carry more sentiment, and the KL-share ranking favours frequent tokens).
p = nulls.rank_p_value of the observed mean among the null sets' means; z and percentile are descriptive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import nulls
from ..errors import UserError

STRATA = 100
"""Frequency strata of the output null: percentiles of the base model's log mean probability over the candidates
(adjacent ones merged where the pool has too little room, `merge_strata`). Deciles are too coarse at the top,
where KL-share lists sit: sets of 30 drawn from the 100 most frequent of 15,000 candidates with utilities
correlated with frequency were called reward-laden 16-35% of the time against deciles, 7% against percentiles."""
TEST = "frequency-matched random token sets"
UNIFORM_TEST = "random token sets (not matched for frequency)"


@dataclass
class Vocabulary:
    """Candidate tokens: those that decode to one word (and start one, with `whole_words`)."""

    ids: np.ndarray
    """int64 [n]: token ids."""
    pieces: list[str]
    """What each token adds to a text (its leading space kept)."""
    words: list[str]
    """The word each token decodes to (lower-cased, as the utility table is looked up)."""
    whole_words: bool
    """Whether only word-starting tokens were kept."""


def vocabulary(tokenizer, vocab_size: int, whole_words: bool = True) -> Vocabulary:
    """Every token id below `vocab_size` that decodes to exactly one word with a letter in it."""
    from ..interp.text import TokenDecoder
    from ..rewards import words

    decoder = TokenDecoder(tokenizer)
    special = set(tokenizer.all_special_ids or [])
    n = min(vocab_size, len(tokenizer))
    anchor = decoder._anchor
    # One batch_decode instead of a decode per id: ~50k tokens take a second, not ten.
    texts = tokenizer.batch_decode([anchor + [i] for i in range(n)]) if anchor else \
        tokenizer.batch_decode([[i] for i in range(n)])
    ids, pieces, found, starts = [], [], [], []
    for i, text in enumerate(texts):
        if i in special:
            continue
        piece = text[len(decoder._anchor_text):] if anchor and text.startswith(decoder._anchor_text) else \
            tokenizer.decode([i])
        w = words(piece)
        if len(w) != 1 or not any(c.isalpha() for c in w[0]) or "\ufffd" in piece:
            continue
        ids.append(i)
        pieces.append(piece)
        found.append(w[0])
        starts.append(piece[:1].isspace())
    keep = [k for k in range(len(ids)) if starts[k]] if whole_words and any(starts) else list(range(len(ids)))
    if not keep:
        raise UserError("no token of the tokenizer decodes to a word; cannot read the change through words")
    return Vocabulary(np.array([ids[k] for k in keep], dtype=np.int64), [pieces[k] for k in keep],
                      [found[k] for k in keep], whole_words and any(starts))


class WordUtility:
    """U(word) from a utility table, or from the reward's score of the word in a neutral template."""

    def __init__(self, reward_spec: str, reward, table: str | None, template: str):
        from ..rewards import load_utility_table, parse_spec

        kind, arg, _ = parse_spec(reward_spec)
        self.table: dict[str, float] | None = None
        self._cache: dict[str, float] = {}
        if table is not None or kind in ("vader", "table"):
            name = table if table is not None else ("vader" if kind == "vader" else arg)
            self.table = load_utility_table(name)
            self.kind, self.source = "table", name
            self.note = f"U(word) from the utility table {name}"
        else:
            self.reward, self.template = reward, template
            self.kind, self.source = "template", template
            self._empty = float(reward([template.format(word="")])[0])
            self.note = (f"no utility table: U(word) = reward({template!r}) - reward of the template with no word "
                         f"(the reward's own reading of the word in a neutral sentence)")

    def __call__(self, words: list[str]) -> np.ndarray:
        if self.table is not None:
            return np.array([float(self.table.get(w, 0.0)) for w in words], dtype=np.float64)
        todo = sorted({w for w in words if w not in self._cache})
        if todo:
            scores = self.reward([self.template.format(word=w) for w in todo])
            self._cache.update({w: float(s) - self._empty for w, s in zip(todo, scores)})
        return np.array([self._cache[w] for w in words], dtype=np.float64)


def _against(observed: float, null: np.ndarray) -> dict:
    mean, std = float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else 0.0
    z = (observed - mean) / std if std > 0 else 0.0
    percentile = 100.0 * (float((null < observed).mean()) + 0.5 * float((null == observed).mean()))
    return {"observed": float(observed), "null_mean": mean, "null_std": std, "z": z, "percentile": percentile,
            "null_max": float(null.max()), "null_min": float(null.min()), "n": int(len(null))}


def ranked_tokens(score: torch.Tensor, vocab: Vocabulary, utility: WordUtility, k: int, min_change: float,
                  logprob_change: torch.Tensor | None = None) -> list[dict]:
    """The k candidates with the largest `score` ([V]), among those whose score exceeds min_change."""
    values = score[torch.from_numpy(vocab.ids)].double().numpy()
    order = np.argsort(-values, kind="stable")
    chosen = [int(j) for j in order[:k] if values[j] > min_change]
    utilities = utility([vocab.words[j] for j in chosen]) if chosen else np.zeros(0)
    rows = []
    for j, u in zip(chosen, utilities):
        row = {"token_id": int(vocab.ids[j]), "piece": vocab.pieces[j], "word": vocab.words[j],
               "score": float(values[j]), "utility": float(u)}
        if logprob_change is not None:
            row["logprob_change"] = float(logprob_change[int(vocab.ids[j])])
        rows.append(row)
    return rows


def rank_scores(measure: str, logprob_change: torch.Tensor, promote_share: torch.Tensor,
                demote_share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(promote score, demote score) per token for `measure` ("kl" or "logprob")."""
    if measure == "logprob":
        return logprob_change, -logprob_change
    return promote_share, demote_share


def frequency_strata(log_prob: np.ndarray, n_strata: int = STRATA) -> np.ndarray:
    """int [n]: the stratum of each value, 0 (least probable) .. n_strata-1, by rank (equal-sized strata, ties in
    candidate order), so ties and a flat distribution still give n_strata strata."""
    n = len(log_prob)
    order = np.argsort(np.asarray(log_prob, dtype=np.float64), kind="stable")
    strata = np.empty(n, dtype=np.int64)
    strata[order] = (np.arange(n) * min(n_strata, max(n, 1))) // max(n, 1)
    return strata


def merge_strata(pool_counts: np.ndarray, wanted: np.ndarray, room: int = 4) -> np.ndarray:
    """Group adjacent strata (in frequency order) until every group's pool holds at least `room` times the tokens the
    listed set takes from it: [n_strata] -> group id. Room lets the random sets differ from the list (a group no
    larger than the list's share of it would draw the list itself every time); most groups are one stratum, a small
    vocabulary or a template pool merges some."""
    group = np.zeros(len(pool_counts), dtype=np.int64)
    current, have, need = 0, 0, 0
    for s in range(len(pool_counts)):
        group[s] = current
        have, need = have + int(pool_counts[s]), need + int(wanted[s])
        if have >= room * need and have > 0:
            current, have, need = current + 1, 0, 0
    # the last group is short: join it to the ones before until it has room (or holds everything)
    while current > 0 and have < room * need:
        previous = group == current - 1
        have, need = have + int(pool_counts[previous].sum()), need + int(wanted[previous].sum())
        group[group == current] = current - 1
        current -= 1
    return group


class NullPool:
    """Utilities of the candidates the null draws from (every candidate, or a scored random pool), with each
    candidate's frequency stratum (from the base model's mean next-token probability, `base_prob` [V]; without it
    one stratum: the uniform null)."""

    def __init__(self, vocab: Vocabulary, utility: WordUtility, size: int, seed: int,
                 base_prob: torch.Tensor | np.ndarray | None = None):
        if base_prob is not None:
            prob = np.asarray(base_prob, dtype=np.float64)[vocab.ids]
            strata = frequency_strata(np.log(np.maximum(prob, 1e-300)), STRATA)
        else:
            strata = np.zeros(len(vocab.ids), dtype=np.int64)
        self.n_strata = int(strata.max()) + 1 if len(strata) else 1
        self.stratum_of = dict(zip(vocab.ids.tolist(), strata.tolist()))
        """token id -> frequency stratum, for every candidate (an observed token need not be in the pool)."""
        self.kind = utility.kind
        if utility.kind == "table":
            pick = np.arange(len(vocab.words))
        else:
            rng = np.random.default_rng([seed, 7])
            pick = np.sort(rng.choice(len(vocab.words), min(size, len(vocab.words)), replace=False))
        self.values = utility([vocab.words[j] for j in pick])
        self.strata = strata[pick]
        self.in_table = int((self.values != 0).sum())
        self.matched = base_prob is not None


def stratified_means(pool: NullPool, strata: list[int], n_sets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean utility, share with nonzero utility) of n_sets random sets from the pool with as many tokens from each
    frequency stratum as `strata` (the observed tokens' strata) has; adjacent strata are merged where the pool holds
    too few (`merge_strata`)."""
    wanted = np.bincount(np.asarray(strata, dtype=np.int64), minlength=pool.n_strata)
    group = merge_strata(np.bincount(pool.strata, minlength=pool.n_strata), wanted)
    rng = np.random.default_rng([seed, 0x57A])
    total, nonzero = np.zeros(n_sets), np.zeros(n_sets)
    k = 0
    for g in np.unique(group):
        members = np.flatnonzero(np.isin(pool.strata, np.flatnonzero(group == g)))
        c = min(int(wanted[group == g].sum()), len(members))
        if c == 0:
            continue
        chosen = _draw_sets(rng, pool.values[members], c, n_sets)
        total += chosen.sum(1)
        nonzero += (chosen != 0).sum(1)
        k += c
    return total / max(k, 1), nonzero / max(k, 1)


def read_tokens(tokens: list[dict], pool: NullPool, n_sets: int, seed: int, side: str = "greater") -> dict | None:
    """Mean utility of a token list against `n_sets` frequency-matched random sets of the same size (the pool's
    strata); None for an empty list. `p`: rank p-value on `side` ("greater" for promoted tokens, "less" for demoted);
    `in_table_rate` (share with nonzero utility) against the null sets' rate, with its own p (`in_table_p`, greater)."""
    if not tokens:
        return None
    utilities = np.array([t["utility"] for t in tokens], dtype=np.float64)
    observed = float(utilities.mean())
    strata = [pool.stratum_of.get(int(t["token_id"]), 0) for t in tokens]
    means, rates = stratified_means(pool, strata, n_sets, seed)
    rate = float((utilities != 0).mean())
    return {**_against(observed, means), "in_table": int((utilities != 0).sum()),
            "test": TEST if pool.matched else UNIFORM_TEST, "side": side, "p": nulls.rank_p_value(observed, means, side),
            "p_floor": nulls.p_floor(n_sets), "strata": np.bincount(strata, minlength=pool.n_strata).tolist(),
            "in_table_rate": rate, "in_table_null_rate": float(rates.mean()),
            "in_table_p": nulls.rank_p_value(rate, rates, "greater")}


def read_tokens_uniform(tokens: list[dict], pool: NullPool, n_sets: int, seed: int, side: str = "greater") -> dict | None:
    """The same token list against uniformly drawn random sets (no frequency matching), for comparison."""
    if not tokens:
        return None
    observed = float(np.mean([t["utility"] for t in tokens]))
    null_means = _draw_sets(np.random.default_rng([seed, 0x0F1]), pool.values, min(len(tokens), len(pool.values)),
                            n_sets).mean(1)
    return {**_against(observed, null_means), "test": UNIFORM_TEST, "side": side,
            "p": nulls.rank_p_value(observed, null_means, side), "p_floor": nulls.p_floor(n_sets)}


def _draw_sets(rng: np.random.Generator, values: np.ndarray, c: int, n_sets: int) -> np.ndarray:
    """[n_sets, c]: c of `values` per set without replacement (the c smallest of uniform keys), in chunks of sets
    so the keys stay a few million numbers."""
    chunk = max(1, 4_000_000 // max(len(values), 1))
    out = []
    for start in range(0, n_sets, chunk):
        keys = rng.random((min(chunk, n_sets - start), len(values)))
        out.append(values[np.argpartition(keys, c - 1, axis=1)[:, :c]])
    return np.concatenate(out)


def _p_text(test: str, p: float, floor: float | None = None) -> str:
    text = f"{test}, p={p:.2g}"
    return text + (f"; p floor {floor:.2g}" if floor is not None and p <= floor else "")


def token_verdict(promoted: dict | None, demoted: dict | None, level: float, what: str = "tuning") -> str:
    """A plain sentence saying whether the promoted (and demoted) words carry the reward beyond the null: each list's
    rank p-value (promoted: greater, demoted: less), Holm-adjusted over the lists tested, against `level`."""
    if promoted is None and demoted is None:
        return f"no change: {what} moves no token's log-probability"
    present = [(name, null) for name, null in (("promoted", promoted), ("demoted", demoted)) if null is not None]
    adjusted = dict(zip([name for name, _ in present], nulls.holm([null["p"] for _, null in present])))
    holm_note = " Holm-adjusted over promoted and demoted" if len(present) > 1 else ""
    parts = []
    if promoted is not None:
        p = float(adjusted["promoted"])
        said = _p_text(promoted.get("test", TEST), p, promoted.get("p_floor")) + holm_note
        if p <= level:
            parts.append(f"{what} promotes reward-laden words ({said})")
        else:
            parts.append(f"the words {what} promotes are no more reward-laden than random tokens ({said}): "
                         "nothing reward-laden found among them")
    if demoted is not None:
        p = float(adjusted["demoted"])
        said = _p_text(demoted.get("test", TEST), p, demoted.get("p_floor")) + holm_note
        if p <= level:
            parts.append(f"{'it' if parts else what} demotes words the reward penalises ({said})")
        else:
            parts.append(f"the words {'it' if parts else what} demotes are not below random tokens in utility "
                         f"({said})")
    return "; ".join(parts)


# --- the logit lens -------------------------------------------------------------------------

_FINAL_NORMS = ("gpt_neox.final_layer_norm", "model.norm", "transformer.ln_f")


def final_norm(model: nn.Module) -> nn.Module:
    for path in _FINAL_NORMS:
        module = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if module is not None:
            return module
    raise UserError(f"no final norm found in a {model.config.model_type} model; the logit lens needs one")


@torch.inference_mode()
def lens_logits(model: nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """Unembedding of the final norm of each direction, without the norm's bias ([k, d] -> [k, V]).

    The bias (norm of the zero vector) adds the same logits to every direction; subtracting it makes
    the lens of a direction say something about that direction alone.
    """
    norm = final_norm(model)
    device = next(model.parameters()).device
    x = directions.to(device, next(model.parameters()).dtype)
    normed = norm(x) - norm(torch.zeros_like(x))
    return model.get_output_embeddings()(normed).float().cpu()


def logit_lens(model: nn.Module, direction: torch.Tensor, randoms: torch.Tensor, vocab: Vocabulary,
               utility: WordUtility, k: int, level: float) -> dict:
    """Top-k candidate tokens of the lens of `direction`, their mean utility against the random directions' top-k
    (the run's random directions of the same norm): rank p-value (greater) compared with `level`; z descriptive."""
    if float(direction.norm()) == 0:
        return {"top": [], "null": None, "verdict": "no change: the direction is zero"}
    logits = lens_logits(model, torch.cat([direction[None], randoms]))
    ids = torch.from_numpy(vocab.ids)
    cand = logits[:, ids]
    top = torch.topk(cand, min(k, cand.shape[1]), dim=1).indices.numpy()
    means = [float(utility([vocab.words[j] for j in row]).mean()) for row in top]
    tokens = [{"token_id": int(vocab.ids[j]), "piece": vocab.pieces[j], "word": vocab.words[j],
               "logit": float(cand[0, j]), "utility": float(u)}
              for j, u in zip(top[0], utility([vocab.words[j] for j in top[0]]))]
    n = len(means) - 1
    if n == 0:
        return {"top": tokens, "null": None, "verdict": "no random directions: the lens of Δ has no null",
                "random_means": []}
    null = {**_against(means[0], np.array(means[1:])), "test": "random directions of the same norm",
            "p": nulls.rank_p_value(means[0], means[1:], "greater"), "p_floor": nulls.p_floor(n)}
    said = _p_text(f"{n} random directions", null["p"], null["p_floor"])
    if null["p"] <= level:
        verdict = f"the lens of Δ reads reward-laden words ({said})"
    elif null["p_floor"] > level:
        verdict = (f"the lens of Δ cannot be judged: {n} random directions give p >= {null['p_floor']:.2g} > level "
                   f"{level:g} ({said})")
    else:
        verdict = f"the lens of Δ is no more reward-laden than random directions ({said})"
    return {"top": tokens, "null": null, "verdict": verdict, "random_means": means[1:]}
