"""Causal block ranking: which blocks' own change moves the reward when put into the base model.

Block L's own change is read by parameter patching: the base model with its block L swapped for the tuned model's
block L (`patched_block`), sampled on held-out prompts with the same random numbers as the unpatched base. Every
other block is base's, so what later blocks would do in reaction to a change above them is not credited to them
(the older Δ_L - Δ_{L-1} did that: a block after a changed one carried its reaction). A block whose parameters did
not change is not sampled (gain 0, not tested).
Each tested block's null: `n_random` random directions added to base's block L output, matched on the KL the
patch causes (teacher-forced on the prompts, as `steering.steered_kl`; `steering.kl_matched`), on the same prompts
and random numbers. Per block p = max(paired sign-flip p of the per-prompt gain against the random directions'
mean, rank p of the mean gain among theirs), one-sided (raises the reward); Holm across the tested blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .. import nulls
from .steering import Advance, GroupResult, kl_matched, mean_se, run_groups
from .vector_test import vector_test

SALT = 7
"""Seeds the ranking's random directions apart from the steering curve's at the same block."""


def default_rank_layers(n_blocks: int, analysed: list[int], spread: int) -> list[int]:
    """`spread` blocks evenly over depth (first and last included) plus the analysed ones, sorted."""
    picks = {int(round(x)) for x in np.linspace(0, n_blocks - 1, spread)} if spread > 0 else set()
    return sorted(picks | set(analysed))


@contextmanager
def swapped_block(model: nn.Module, layer: int, block: nn.Module) -> Iterator[nn.Module]:
    """`model` with `block` in place of its block `layer` (the same index, so KV-cache slots still match), put
    back whatever happens."""
    from ..models import blocks

    layers = blocks(model)
    original = layers[layer]
    layers[layer] = block
    try:
        yield model
    finally:
        layers[layer] = original


def patched_block(base: nn.Module, tuned: nn.Module, layer: int):
    """Context: the base model with the tuned model's block `layer` (block L's own change, on base's input)."""
    from ..models import blocks

    return swapped_block(base, layer, blocks(tuned)[layer])


def block_changed(base: nn.Module, tuned: nn.Module, layer: int) -> bool:
    """Whether any parameter of block `layer` differs between the two models."""
    from ..models import blocks

    if base is tuned:
        return False
    pairs = zip(blocks(base)[layer].parameters(), blocks(tuned)[layer].parameters())
    return not all(torch.equal(a, b) for a, b in pairs)


class _Unpatched:
    """The reference for `run_groups`' KL while `base` is patched: base with its own block back, for that call."""

    def __init__(self, model: nn.Module, layer: int, block: nn.Module):
        self.model, self.layer, self.block = model, layer, block

    def __call__(self, **kwargs):
        with swapped_block(self.model, self.layer, self.block):
            return self.model(**kwargs)


@torch.no_grad()
def patch_kl(base: nn.Module, tuned: nn.Module, prompts: list[list[int]], layer: int) -> float:
    """Mean next-token KL(patched || base), teacher-forced on the prompts' tokens: per prompt the mean over its
    tokens, then the mean over prompts, exactly as `steering.steered_kl` measures a vector (the scale the random
    directions are matched on)."""
    from .steering import per_prompt_kl, prompt_inputs

    ids, kwargs = prompt_inputs(base, prompts)
    lp_base = torch.log_softmax(base(input_ids=ids, **kwargs).logits.float(), -1)
    with patched_block(base, tuned, layer):
        lp = torch.log_softmax(base(input_ids=ids, **kwargs).logits.float(), -1)
    return float(per_prompt_kl(lp, lp_base, kwargs["attention_mask"]).mean())


def ranking_groups(base: nn.Module, tuned: nn.Module, layers: list[int], n_random: int) -> int:
    """How many groups `causal_ranking` samples (a progress bar's total): each changed block's patch and its random
    directions."""
    return sum(1 + n_random for layer in layers if block_changed(base, tuned, layer))


def block_test(gains: np.ndarray, null_gains: np.ndarray, seed: int) -> dict:
    """One block's test: `gains` [P] per prompt (patched - base), `null_gains` [n, P] of its random directions;
    `vector_test`'s test, one-sided (raises the reward)."""
    null_gains = np.asarray(null_gains, dtype=np.float64).reshape(-1, len(gains))
    if not len(null_gains):
        return {"p_paired": 1.0, "p_between": 1.0, "p_rank": 1.0, "p": 1.0, "null_gains": []}
    t = vector_test(gains, null_gains, seed, side="greater")
    return {key: t[key] for key in ("p_paired", "p_between", "p_rank", "p")} | {"null_gains": t["null"]["rewards"]}


def causal_ranking(base: nn.Module, tuned: nn.Module, tokenizer, reward, prompts: list[list[int]], layers: list[int],
                   base_result: GroupResult, n_new: int, seed: int, n_random: int, coherence_kl: float, level: float,
                   own: torch.Tensor | None = None, advance: Advance | None = None) -> dict:
    """Patch each block of `layers` into the base model (`patched_block`), sample it and `n_random` KL-matched random
    directions at that block on `prompts` (same random numbers as `base_result`), test each block against its null
    and Holm across the tested blocks. `own`: the Δ_L - Δ_{L-1} per block, kept beside as a reading. `advance`: told
    of each generation call's groups (`run_groups`)."""
    from ..models import blocks

    rows = []
    for layer in layers:
        row = {"layer": layer, "own_norm": float(own[layer].norm()) if own is not None else None, "changed": False,
               "gain": 0.0, "gain_se": 0.0, "kl": 0.0, "matched_kl": 0.0, "null_kl": [], "null_gains": [],
               "p_paired": None, "p_between": None, "p_rank": None, "p": None, "p_adjusted": None, "beyond": False, "coherent": True}
        rows.append(row)
        if not block_changed(base, tuned, layer):
            continue  # the same parameters: the patch is the base model itself
        row["changed"] = True
        target = patch_kl(base, tuned, prompts, layer)
        own_block = blocks(base)[layer]
        with patched_block(base, tuned, layer):
            patched = run_groups(base, _Unpatched(base, layer, own_block), tokenizer, reward, prompts, [{}], n_new,
                                 seed, advance)[0]
        start = row["own_norm"] if row["own_norm"] else None
        directions, reached = kl_matched(base, prompts, layer, target, n_random, seed, salt=SALT, start_norm=start)
        randoms = run_groups(base, base, tokenizer, reward, prompts, [{layer: v} for v in directions], n_new, seed,
                             advance) if n_random and target > 0 else []
        if advance is not None and not randoms:
            advance(n_random)  # counted in `ranking_groups`, not sampled
        gains = patched.rewards - base_result.rewards
        row["gain"], row["gain_se"] = mean_se(gains)
        row.update(kl=patched.kl, matched_kl=target, null_kl=[float(k) for k in reached][:len(randoms)],
                   coherent=patched.kl <= coherence_kl)
        if target > 0:  # a change that moves no next-token distribution on the prompts is not tested
            row.update(block_test(gains, np.stack([r.rewards - base_result.rewards for r in randoms])
                                  if randoms else np.zeros((0, len(gains))), seed + layer))
    tested = [row for row in rows if row["p"] is not None]
    for row, adjusted in zip(tested, nulls.holm([row["p"] for row in tested])):
        row["p_adjusted"] = float(adjusted)
        row["beyond"] = bool(adjusted <= level)
    rows.sort(key=lambda row: (not row["coherent"], -row["gain"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {"direction": "parameter patch: the tuned model's block L in the base model", "layers": list(layers),
            "n_random": n_random, "level": level, "n_prompts": len(prompts), "tested": len(tested), "rows": rows,
            "verdict": ranking_verdict(rows, level, n_random)}


def ranking_verdict(rows: list[dict], level: float, n_random: int) -> str:
    """The blocks beyond their null, best gain first, or "no block singled out", from every row (not the first alone),
    naming the test, the adjusted p-values and the p floor where the number of random directions limits it."""
    tested = [r for r in rows if r.get("p_adjusted") is not None]
    if not tested:
        return "no block singled out: no ranked block's parameters changed the model's outputs (nothing to test)"
    family = len(tested)
    test = (f"paired sign-flip and t tests against {n_random} KL-matched random directions per block, "
            f"Holm across {family} block{'s' if family > 1 else ''}, level {level:g}")
    beyond = sorted((r for r in tested if r["beyond"]), key=lambda r: -r["gain"])
    if beyond:
        names = ", ".join(str(r["layer"]) for r in beyond[:-1]) + (" and " if len(beyond) > 1 else "") + \
            str(beyond[-1]["layer"])
        figures = "; ".join(f"block {r['layer']}: gain {r['gain']:+.3g} ± {r['gain_se']:.2g}, adjusted p "
                            f"{r['p_adjusted']:.3g}" + ("" if r["coherent"] else ", incoherent") for r in beyond)
        rest = family - len(beyond)
        return (f"block{'s' if len(beyond) > 1 else ''} {names} raise{'' if len(beyond) > 1 else 's'} the reward "
                f"beyond KL-matched random directions ({figures}; {test}); "
                + (f"the other {rest} tested block{'s' if rest > 1 else ''} do{'' if rest > 1 else 'es'} not"
                   if rest else "every tested block does"))
    best = min(tested, key=lambda r: r["p_adjusted"])
    text = (f"no block singled out: no block's own change raises the reward beyond KL-matched random directions "
            f"(smallest adjusted p {best['p_adjusted']:.3g}, block {best['layer']}; {test})")
    if not n_random:
        return text + "; with diff.rank_random = 0 there is no null"
    return text


def choose_blocks(ranking: dict, n: int) -> dict:
    """The n blocks to analyse from a causal ranking (`diff["ranking"]` or the whole diff dict): the blocks beyond
    their null first (best gain first), then the next best by gain (rank order), and a sentence saying which is
    which. For `divergence.rank = "causal"`, in place of the most-moved parameters."""
    ranking = ranking.get("ranking", ranking)
    if n < 1:
        from ..errors import UserError

        raise UserError(f"the number of blocks must be at least 1 (got {n})")
    rows = ranking.get("rows", [])
    beyond = [r for r in rows if r.get("beyond")]
    picked = (beyond + [r for r in rows if not r.get("beyond")])[:n]
    layers = [int(r["layer"]) for r in picked]
    chosen_beyond = [int(r["layer"]) for r in picked if r.get("beyond")]
    if not picked:
        note = "no ranked block"
    elif len(chosen_beyond) == len(picked):
        note = f"block(s) {', '.join(map(str, layers))}: beyond their null in the causal ranking"
    elif chosen_beyond:
        rest = [x for x in layers if x not in chosen_beyond]
        note = (f"block(s) {', '.join(map(str, chosen_beyond))} beyond their null in the causal ranking; "
                f"{', '.join(map(str, rest))} the next best by gain (not beyond their null)")
    else:
        note = (f"block(s) {', '.join(map(str, layers))}: the best by gain in the causal ranking (no block beyond its "
                "null)")
    return {"layers": layers, "beyond": chosen_beyond, "note": note}


def top_blocks(ranking: dict, n: int) -> list[int]:
    """The n blocks `choose_blocks` picks, best first."""
    return choose_blocks(ranking, n)["layers"]


def held_out_sets(corpus, split: str, read: list[str], seed: int, n_prompts: int) -> tuple:
    """Two corpora of disjoint documents of `split` that the paired pass did not read (`read`: its texts): the
    ranking's "selection" set and the "scoring" set (steering at the chosen blocks), so blocks are not scored on
    the prompts that chose them. A seeded half each; from the whole split when fewer than 2 x max(8, n_prompts
    // 4) documents are unread (as `steering.heldout_prompts` falls back)."""
    from ..data import Corpus
    from ..errors import UserError

    docs = corpus.documents(split)
    seen = set(read)
    rest = [d for d in docs if d.text not in seen]
    pool = rest if len(rest) >= 2 * max(8, n_prompts // 4) else docs
    if len(pool) < 2:
        raise UserError(f"diff.split {split!r} has {len(pool)} document(s); the causal ranking and the steering need "
                        "two disjoint sets of held-out documents: give a split with at least 2")
    order = np.random.default_rng([seed, 0x5E1]).permutation(len(pool))
    half = len(pool) // 2
    selection = [pool[i] for i in sorted(order[:half])]
    scoring = [pool[i] for i in sorted(order[half:])]
    # two split names over the same documents: a one-split Corpus would hold out a fifth of them again
    return tuple(Corpus(f"{corpus.name} ({name})", {split: part, f"{split} ({name})": part})
                 for name, part in (("selection", selection), ("scoring", scoring)))
