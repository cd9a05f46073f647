"""A direction's reward effect, read from what it does to the output (no LLM; after Gur-Arieh et al. 2025).

Two output-centric readings of a direction added to the residual stream at block L (an SAE feature's decoder
row, a decomposition's latent):

- **VocabProj** (`vocab_proj`): the direction through the final norm and the unembedding (the norm's bias removed,
  `diff.output.lens_logits`): the direct path only; what later blocks (attention, MLPs) make of it is not included.
- **TokenChange** (`token_change`): the model steered at block L by the unit direction scaled so that the steered
  model is `target_kl` nats per token from the unsteered one (teacher-forced on held-out prompts, as the diff's
  random directions are matched: `diff.steering.match_norms`), and each token's share of that KL,
  p_steered (log p_steered - log p_unsteered), averaged over the prompts' positions: every path through the model.

`reward_effects` lists each reading's top candidate tokens (`diff.output.vocabulary`) with their utilities
U(word) and tests each list's mean utility against frequency-matched random token sets (`diff.output.read_tokens`,
two-sided). A direction's **reward effect** is TokenChange's mean utility minus its null mean, with its p,
Benjamini-Hochberg q over the directions of the call, and a claim at `level`. `OutputReading` is what these need
from a run, read once from a diff folder (`output_reading`). docs/interp.md, "Reward effect".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import nulls
from ..diff import output, steering
from ..errors import UserError

SIDE = "two-sided"
"""The side of every list's test: a direction may push the output toward rewarded or penalised words, and the claim
says which (the sign of the effect); a rank p-value of |mean - null mean| among the null sets' (nulls.rank_p_value)."""
FALLBACK_KL = "median"
"""The target KL at a block the diff did not steer (coherently): the median of the steered blocks' target KLs."""


@dataclass
class OutputReading:
    """What the reward-effect readings need from a run, loaded once (`output_reading`)."""

    vocab: output.Vocabulary
    """The candidate tokens (one word each) the lists are drawn from."""
    utility: output.WordUtility
    """U(word): the reward's utility table, or its reading of the word in a neutral template."""
    pool: output.NullPool
    """The candidates' utilities and frequency strata (the base model's mean next-token probability)."""
    prompts: list[list[int]]
    """Held-out prompts (token ids) TokenChange is teacher-forced on: the diff's steering prompts."""
    target_kl: dict[int, float]
    """Per block the diff steered coherently: the KL (nats per token, teacher-forced) its reported α·Δ_L causes."""
    default_kl: float
    """The target KL at any other block (`FALLBACK_KL`)."""
    start_norm: dict[int, float] = field(default_factory=dict)
    """Per steered block, α·|Δ_L|: where the norm search starts (an aimed direction of that KL)."""
    match_kl: bool = True
    """TokenChange's strength: each direction's norm searched so it causes the block's target KL; False: every
    direction at the block's α·|Δ_L| (one pass; matched on KL only at a block the diff did not steer)."""
    null_sets: int = 2000
    """Random token sets per list's null."""
    seed: int = 0
    level: float = 0.05
    source: str = ""
    """Where it was read from (a diff folder), for the record."""

    def kl_at(self, layer: int) -> float:
        return self.target_kl.get(int(layer), self.default_kl)


def vocab_proj(model: nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """[n, d] -> [n, V]: each direction's logits through the final norm and the unembedding (the norm's bias
    removed): the direct path from the residual stream to the output, without the blocks after the direction's."""
    return output.lens_logits(model, directions.reshape(-1, directions.shape[-1]).float())


@torch.no_grad()
def kl_shares(model: nn.Module, prompts: list[list[int]], layer: int, vectors: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """([n, V], [n]): per vector added at block `layer`, each token's share p_s (log p_s - log p_base) of the next-token
    KL(steered || unsteered), averaged over each prompt's real positions then over the prompts (teacher-forced,
    batched as `steering.steered_kl`), and that KL (the shares sum to it)."""
    ids, kwargs = steering.prompt_inputs(model, prompts)
    lp_base = torch.log_softmax(model(input_ids=ids, **kwargs).logits.float(), -1)
    mask = kwargs["attention_mask"].float()
    weight = mask / mask.sum(1, keepdim=True).clamp(min=1) / len(prompts)  # [P, T]: mean per prompt, then over prompts
    p, per_call = len(prompts), max(1, steering.MAX_ROWS // len(prompts))
    shares, kls = [], []
    for start in range(0, len(vectors), per_call):
        chunk = vectors[start:start + per_call].float().to(ids.device)
        n = len(chunk)
        rep = {k: v.repeat(n, 1) for k, v in kwargs.items() if torch.is_tensor(v)}
        with steering.Steer(model, {layer: chunk.repeat_interleave(p, 0)}):
            lp = torch.log_softmax(model(input_ids=ids.repeat(n, 1), use_cache=False, **rep).logits.float(), -1)
        for i in range(n):  # one vector's rows at a time: [P, T, V] temporaries, not [n P, T, V]
            rows = lp[i * p:(i + 1) * p]
            share = torch.einsum("pt,ptv->v", weight, rows.exp() * (rows - lp_base))
            shares.append(share.cpu())
            kls.append(float(share.sum()))
    return (torch.stack(shares) if shares else torch.zeros(0, lp_base.shape[-1]), torch.tensor(kls))


def token_change(model: nn.Module, prompts: list[list[int]], layer: int, directions: torch.Tensor, target_kl: float,
                 start_norm: float | None = None, steps: int = 8, tolerance: float = 0.05,
                 advance: Callable[[int], None] | None = None,
                 fixed_norm: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(share [n, V], norms [n], kls [n]): each unit direction scaled so that steering at block `layer` causes
    `target_kl` (teacher-forced on `prompts`, within `tolerance`: `steering.match_norms`, batched; a direction whose
    KL saturates below the target keeps the closest norm, its KL says how close), then each token's share of the KL
    it causes (`kl_shares`). With `fixed_norm`, every unit direction is scaled to that norm instead (one pass, no
    search; its KL is still measured). A zero direction gets norm 0, zero shares and KL 0. `advance(k)` after each
    k done."""
    from ..models import check_layers

    check_layers(model, [layer])
    d = int(model.config.hidden_size)
    directions = directions.reshape(-1, directions.shape[-1]).float() if directions.numel() else torch.zeros(0, d)
    if directions.shape[-1] != d:
        raise UserError(f"directions have width {directions.shape[-1]} but block {layer}'s output has {d}")
    lengths = directions.norm(dim=1)
    units = directions / lengths.clamp(min=1e-30)[:, None]
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    share, norms, kls = torch.zeros(len(units), vocab_size), torch.zeros(len(units)), torch.zeros(len(units))
    live = (lengths > 0).nonzero()[:, 0]
    per_call = max(1, steering.MAX_ROWS // max(len(prompts), 1))
    begin = start_norm or 1.0
    for start in range(0, len(live), per_call):  # chunks of one forward call each: early stops, progress
        idx = live[start:start + per_call]
        if fixed_norm is not None and fixed_norm > 0:
            norm = torch.full((len(idx),), float(fixed_norm))
            share[idx], kls[idx] = kl_shares(model, prompts, layer, units[idx] * norm[:, None])
            norms[idx] = norm
        elif target_kl > 0:
            norm, _, _ = steering.match_norms(model, prompts, layer, units[idx], target_kl, begin, steps, tolerance)
            # the next chunk starts where this one ended: directions of a block need norms of one scale
            begin = float(norm.median())
            vectors = units[idx] * norm[:, None].float()
            share[idx], kls[idx] = kl_shares(model, prompts, layer, vectors)
            norms[idx] = norm.float()
        if advance is not None:
            advance(len(idx))
    if advance is not None and len(live) < len(units):
        advance(len(units) - len(live))
    return share, norms, kls


def _read(scores: torch.Tensor | None, reading: OutputReading, top: int, min_change: float, seed: int) -> dict:
    tokens = [] if scores is None else output.ranked_tokens(scores, reading.vocab, reading.utility, top, min_change)
    null = output.read_tokens(tokens, reading.pool, reading.null_sets, seed, side=SIDE)
    if null is None:
        return {"tokens": [], "mean_utility": None, "effect": None, "null_mean": None, "null_std": None, "p": 1.0,
                "p_floor": nulls.p_floor(reading.null_sets), "test": None, "strata": []}
    return {"tokens": tokens, "mean_utility": null["observed"], "effect": null["observed"] - null["null_mean"],
            "null_mean": null["null_mean"], "null_std": null["null_std"], "z": null["z"], "p": null["p"],
            "p_floor": null["p_floor"], "test": f"{null['test']} ({SIDE})", "strata": null["strata"]}


def _verdict(effect: float | None, q: float, claim: str | None, floor: float, level: float, n: int) -> str:
    if effect is None:
        return "no reward effect: steering by it promotes no candidate word"
    said = f"q={q:.2g}, Benjamini-Hochberg over {n} direction{'s' if n != 1 else ''}"
    if claim == "raises":
        return f"pushes the output toward words the reward favours ({said})"
    if claim == "lowers":
        return f"pushes the output toward words the reward penalises ({said})"
    if floor > level:
        return (f"cannot be judged: the p floor {floor:.2g} of the null sets is above level {level:g}; "
                "raise diff.null_sets")
    return f"no reward effect beyond random token sets ({said})"


def reward_effects(model: nn.Module, reading: OutputReading, layer: int, directions: torch.Tensor,
                   output_top: int = 20, level: float | None = None,
                   advance: Callable[[int], None] | None = None) -> list[dict]:
    """One record per direction ([n, d], added at block `layer`): {"vocab_proj": {"tokens", "effect", "null_mean",
    "p", ...}, "token_change": {..., "norm", "kl", "target_kl"}, "reward_effect": {"effect", "p", "q", "claim",
    "verdict"}}. Each list holds the top `output_top` candidates (VocabProj by logit; TokenChange by KL share, those
    with a positive share only); "effect" = its mean utility minus the mean of frequency-matched random sets of its
    size, p two-sided (`SIDE`). The reward effect is TokenChange's; q: Benjamini-Hochberg over this call's
    directions; claim "raises" / "lowers" where q <= `level` (default: reading.level), else None."""
    from ..progress import progress_advance

    level = reading.level if level is None else level
    directions = directions.reshape(-1, directions.shape[-1]).float() if directions.numel() else \
        torch.zeros(0, int(model.config.hidden_size))
    target = reading.kl_at(layer)
    with progress_advance("" if advance is not None else
                          f"reward effect: {len(directions)} direction(s) of block {layer}", len(directions)) as bar:
        start = reading.start_norm.get(int(layer))
        shares, norms, kls = token_change(model, reading.prompts, layer, directions, target, start,
                                          advance=advance or bar, fixed_norm=None if reading.match_kl else start)
    logits = vocab_proj(model, directions) if len(directions) else None
    records = []
    for i in range(len(directions)):
        seed = reading.seed + 3 + 2 * i  # the diff's lists use seed .. seed + 2; each list its own draws
        zero = float(norms[i]) == 0
        vp = _read(None if float(directions[i].norm()) == 0 else logits[i], reading, output_top, -np.inf, seed)
        tc = _read(None if zero else shares[i], reading, output_top, 0.0, seed + 1)
        tc.update(norm=float(norms[i]), kl=float(kls[i]), target_kl=target)
        records.append({"vocab_proj": vp, "token_change": tc})
    qs = nulls.benjamini_hochberg([r["token_change"]["p"] for r in records])
    for r, q in zip(records, qs):
        tc = r["token_change"]
        effect = tc["effect"]
        claim = None if effect is None or q > level or effect == 0 else ("raises" if effect > 0 else "lowers")
        r["reward_effect"] = {"effect": effect, "p": tc["p"], "q": float(q), "claim": claim, "level": level,
                              "verdict": _verdict(effect, float(q), claim, tc["p_floor"], level, len(records))}
    return records


def add_reward_effects(records: list[dict], saes: dict, model: nn.Module, reading: OutputReading, layer: int,
                       output_top: int = 20) -> None:
    """Fill feature records' "vocab_proj", "token_change" and "reward_effect" (in place): each record's SAE feature
    (record["sae"] names its SAE in `saes`) read as its decoder row added at block `layer` of `model`;
    Benjamini-Hochberg over these records."""
    if not records:
        return
    directions = torch.stack([saes[r["sae"]].dictionary[int(r["feature"])].detach().float() for r in records])
    for record, effect in zip(records, reward_effects(model, reading, layer, directions, output_top)):
        record.update(effect)


def output_reading(diff_dir: str | os.PathLike, model: nn.Module, tokenizer, reward_spec: str, table: str | None,
                   reward=None, prompt_min_chars: int | None = None, match_kl: bool = True) -> OutputReading:
    """The reading of a diff folder (diff.json + deltas.safetensors): its candidate vocabulary and U(word) (its
    whole_words, word_template, word_pool), the frequency-matched pool (its base_prob), its held-out steering prompts
    (drawn again as `diff.run.diff_models` drew them: its corpus, split, max_docs, prompts and seed, and the run's
    `prompt_min_chars`; the corpus must be the one it read), and per block the target KL of its steering curve.
    `reward`: the loaded reward, needed only for a reward without a utility table (loaded here when None)."""
    from ..data import load_corpus
    from ..diff.ranking import held_out_sets
    from ..diff.run import DIFF_JSON, load_deltas
    from ..harvest import texts_fingerprint
    from ..rewards import load_reward, parse_spec

    folder = Path(diff_dir)
    path = folder / DIFF_JSON
    if not path.is_file():
        raise UserError(f"{path}: no such file; the reward effect reads a diff folder (run `rlhf-lens diff` first)")
    diff = json.loads(path.read_text())
    config = diff["config"]
    base_prob = load_deltas(folder).get("base_prob")
    kind = parse_spec(reward_spec)[0]
    if reward is None and table is None and kind not in ("vader", "table"):
        reward = load_reward(reward_spec)
    utility = output.WordUtility(reward_spec, reward, table, config["word_template"])
    vocab = output.vocabulary(tokenizer, int(diff["vocab_size"]), config["whole_words"])
    pool = output.NullPool(vocab, utility, config["word_pool"], config["seed"], base_prob)
    saved = (diff.get("prompt_sets", {}).get("scoring") or {}).get("ids")
    if saved is not None:  # a diff that saves its steering prompts
        prompts = [list(map(int, p)) for p in saved]
    else:
        data = load_corpus(diff["corpus"], text_column=config["text_column"])
        texts = data.texts(config["split"], config["max_docs"])
        if texts_fingerprint(texts) != diff["corpus_fingerprint"]:
            raise UserError(f"the corpus {diff['corpus']} is not the one the diff in {folder} read (its documents "
                            "changed); run the diff again")
        scoring = held_out_sets(data, config["split"], texts, config["seed"], config["prompts"])[1]
        prompts = steering.heldout_prompts(scoring, tokenizer, config["prompts"], config["split"], [], config["seed"],
                                           prompt_min_chars)
    target, start = {}, {}
    for curve in diff.get("steering", []):
        if curve.get("random"):
            target[int(curve["layer"])] = float(curve["random"]["target_kl"])
            start[int(curve["layer"])] = float(curve["alpha"]) * float(curve["delta_norm"])
    default = float(np.median(list(target.values()))) if target else float(config["coherence_kl"]) / 2
    return OutputReading(vocab=vocab, utility=utility, pool=pool, prompts=prompts, target_kl=target,
                         default_kl=default, start_norm=start, match_kl=match_kl, null_sets=int(config["null_sets"]),
                         seed=int(config["seed"]), level=float(config["level"]), source=str(folder))
