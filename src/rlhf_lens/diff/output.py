"""Reading a change through the reward: promoted/demoted tokens, their utility, and its null.

A token's utility is U(word) of the one word it decodes to, looked up in the reward's utility
table (vader, table:FILE, or `DiffConfig.table`). For a reward without a table (a classifier,
the sentiment regression), a word's utility is reward(template with the word) minus reward(template
with no word): how the reward itself reads that word in a neutral sentence.

The null of a set of k tokens is the mean utility of `null_sets` random sets of k tokens drawn from
the same candidate vocabulary (for a template reading: from a seeded pool of `word_pool` candidates,
each scored once). z = (observed - null mean) / null std; percentile = share of null sets below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserError


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


def set_null(observed: float, pool: np.ndarray, k: int, n_sets: int, seed: int) -> dict:
    """Mean utility of n_sets random k-sets of `pool` (utilities), against the observed mean."""
    rng = np.random.default_rng(seed)
    k = min(k, len(pool))
    means = np.array([pool[rng.choice(len(pool), k, replace=False)].mean() for _ in range(n_sets)])
    return _against(observed, means)


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


class NullPool:
    """Utilities of the candidates the null draws from (every candidate, or a scored random pool)."""

    def __init__(self, vocab: Vocabulary, utility: WordUtility, size: int, seed: int):
        if utility.kind == "table":
            self.values = utility(vocab.words)
        else:
            rng = np.random.default_rng([seed, 7])
            pick = rng.choice(len(vocab.words), min(size, len(vocab.words)), replace=False)
            self.values = utility([vocab.words[j] for j in pick])
        self.in_table = int((self.values != 0).sum())


def read_tokens(tokens: list[dict], pool: NullPool, n_sets: int, seed: int) -> dict | None:
    """Mean utility of a token list against random sets of the same size; None for an empty list."""
    if not tokens:
        return None
    observed = float(np.mean([t["utility"] for t in tokens]))
    return {**set_null(observed, pool.values, len(tokens), n_sets, seed),
            "in_table": sum(1 for t in tokens if t["utility"] != 0)}


def token_verdict(promoted: dict | None, demoted: dict | None, z_cut: float, what: str = "tuning") -> str:
    """A plain sentence saying whether the promoted (and demoted) words carry the reward beyond the null."""
    if promoted is None and demoted is None:
        return f"no change: {what} moves no token's log-probability"
    parts = []
    if promoted is not None:
        z = promoted["z"]
        if z >= z_cut:
            parts.append(f"{what} promotes reward-laden words (z={z:.1f})")
        elif z <= -z_cut:
            parts.append(f"{what} promotes words the reward penalises (z={z:.1f})")
        else:
            parts.append(f"the words {what} promotes are no more reward-laden than random tokens (z={z:.1f})")
    if demoted is not None and demoted["z"] <= -z_cut:
        parts.append(f"it demotes words the reward penalises (z={demoted['z']:.1f})")
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
               utility: WordUtility, k: int, z_cut: float) -> dict:
    """Top-k candidate tokens of the lens of `direction`, their mean utility against random directions' top-k."""
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
    null = _against(means[0], np.array(means[1:])) if len(means) > 2 else None
    if null is None:
        verdict = "not enough random directions for a null"
    elif null["z"] >= z_cut and means[0] > null["null_max"]:
        verdict = f"the lens of Δ reads reward-laden words (z={null['z']:.1f})"
    else:
        verdict = f"the lens of Δ is no more reward-laden than random directions (z={null['z']:.1f})"
    return {"top": tokens, "null": null, "verdict": verdict, "random_means": means[1:]}
