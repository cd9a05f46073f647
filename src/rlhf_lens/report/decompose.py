"""The feature-level half of "What tuning changed" (the decompose stage), read from decompose.json's content and
written once as parts for report.html and summary.md: per block the diff-SAE's top latents, the base SAE's shifted
latents, the crosscoder's classes where it ran, and the placebo tune's measures beside the real tune's."""

from __future__ import annotations

from typing import Any

from .format import _float, _num
from .scoring import promoted_words, reward_effect_cell
from .tables import Figure, Heading, Para, Part, Rich, Table, explanation_cell

_NOTE = ("diff-SAE: an SAE trained on h{t} \u2212 h{b} ({site}, same tokens) until converged; its latents ranked by "
         "their share of \u2016\u0394\u2016\u00b2, with the max cosine of each to the other seeds' diff-SAEs (each "
         "seed its own data order: seed agreement), and steering the base model by the latent's decoder row against "
         "random directions of the same norm. Shift: the base model's own SAE encodes both models' activations; per "
         "latent a document-level sign-flip test of its summed tuned \u2212 base code per document (base and tuned "
         "swapped within a document), two-sided, Benjamini-Hochberg across latents; a latent is shifted when its q "
         "\u2264 the level.")
SITES = {"mlp": "MLP outputs", "residual": "residual stream at the block output"}


def _utility_text(u: dict) -> str:
    """A utility of the change: signed mean ± std over diff-SAE seeds, its magnitude-based score beside."""
    signed = u.get("signed") or {}
    magnitude = f"{_num(_float(u.get('mean')))} \u00b1 {_num(_float(u.get('std')))}"
    if not signed:  # a decompose.json from before the signed utility
        return f"|.| {magnitude} ({u.get('n', 0)} seeds)"
    return (f"{_num(_float(signed.get('mean')))} \u00b1 {_num(_float(signed.get('std')))} signed "
            f"(|.| {magnitude}; {signed.get('n', u.get('n', 0))} seeds)")


def change_utility_row(decompose: dict, placebo: dict | None = None) -> list[Any]:
    """The headline's "utility of the change": the paper's utility score on the top diff-SAE latents' explanations,
    signed (|.| beside), mean +- std over diff-SAE seeds, beside its null: the placebo tunes' values and the
    prediction-interval t test against them (results.json placebo.comparison), where they ran."""
    u = (decompose or {}).get("utility_of_change") or {}
    value = _utility_text(u)
    if placebo:
        seeds = placebo.get("seeds") or [{"utility_of_change": placebo.get("utility_of_change")}]
        shown = []
        for s in seeds:
            pu = s.get("utility_of_change") or {}
            shown.append(_num(_float(((pu.get("signed") or {}).get("mean")) if pu.get("signed") else pu.get("mean"))))
        null = f"placebo tunes ({len(seeds)} seeds, {'signed' if u.get('signed') else '|.|'}): {', '.join(shown)}"
        comparison = placebo.get("comparison") or {}
        verdict = comparison.get("verdict") or "one placebo: no spread to test against"
    else:
        null = "no null: the placebo tune (controls.placebo) was off"
        verdict = "no comparison without the placebo tune; read the explanations below"
    return ["utility of the change (top diff-SAE latents' explanations)", value, null, verdict]


def placebo_kl_row(placebo: dict | None) -> list[Any] | None:
    """The placebo tunes' KL to the base beside the real tune's (PPO's final KL; the diff's mean per-token KL on the
    same tokens): how far each tune moved, so the placebo is read as a tune of the same size. None without them."""
    if not placebo or not placebo.get("seeds"):
        return None
    tuned = placebo.get("tuned_kl") or {}

    def kl(k: dict) -> str:
        return f"PPO {_num(_float(k.get('ppo')))}, diff {_num(_float(k.get('diff')))}"

    null = "; ".join(f"seed {s.get('seed')}: {kl(s.get('kl') or {})}" for s in placebo["seeds"])
    return ["KL to base, nats (PPO's final; diff: mean per token)", f"tuned: {kl(tuned)}", f"placebo tunes: {null}",
            "sizes side by side, no test"]


def _steer_text(row: dict | None) -> str:
    if not row:
        return "-"
    test = row.get("test")
    if isinstance(test, dict):  # the calibrated test (diff/vector_test.py): the claim, its test and p
        said = f"{test.get('claim')} the reward" if test.get("claim") else "not distinguishable from random directions"
        verdict = (f"{said} (p={_num(_float(test.get('p')))}, Holm-adjusted {_num(_float(test.get('p_adjusted')))} "
                   f"over {_num(test.get('family'))} latents; {_num(test.get('n_random'))} KL-matched random directions)")
    else:
        verdict = "beats every random direction" if row.get("beats_null") else "within the random directions"
    return f"{_num(_float(row.get('gain')))} \u00b1 {_num(_float(row.get('gain_se')))}; {verdict}"


def _latent_rows(features: list[dict], extra: dict[int, list[Any]]) -> list[list[Any]]:
    """A latent per row: its measures, explanation, simulation score, utility, and (where measured) its reward effect
    and the words it pushes the output toward (`_EFFECT_HEADERS`)."""
    effect = any(isinstance(f.get("reward_effect"), dict) for f in features)
    return [[f.get("feature"), *extra.get(int(f.get("feature", -1)), []), explanation_cell(f), _float(f.get("score")),
             _float(f.get("utility")), *([reward_effect_cell(f), promoted_words(f)] if effect else [])]
            for f in features]


_EFFECT_HEADERS = ["reward effect", "pushes the output toward"]


def _effect_headers(features: list[dict]) -> list[str]:
    return _EFFECT_HEADERS if any(isinstance(f.get("reward_effect"), dict) for f in features) else []


def _first_seed(ds: dict) -> list[dict]:
    """The diff-SAE's explained latents of its first seed (the one the table ranks)."""
    return [f for f in ds.get("features") or [] if f.get("sae") == f"s{(ds.get('seeds') or [0])[0]}"]


def _counts(counts: Any) -> str:
    """{"shared": 40, "tuned-only": 2, ...} as "shared 40, tuned-only 2, ..."."""
    if not isinstance(counts, dict):
        return _num(counts)
    return ", ".join(f"{name} {_num(n)}" for name, n in counts.items()) or "-"


def _crosscoder_text(cc: dict) -> str:
    fvu = cc.get("fvu") or {}
    return (f"Crosscoder ({cc.get('arch')}, {_num(cc.get('dict_size'))} latents; FVU base "
            f"{_num(_float(fvu.get('base')))}, tuned {_num(_float(fvu.get('tuned')))}): classes by Latent Scaling "
            f"{_counts(cc.get('counts'))}; by decoder norms alone {_counts(cc.get('norm_counts'))}; "
            f"{_num(cc.get('disagree'))} latents classed differently by the two.")


def _block_summary(block: dict) -> dict[str, Any]:
    """One block's measures, side by side for the real and the placebo tune."""
    ds, shift = block.get("diff_sae") or {}, block.get("shift") or {}
    top = ds.get("top") or []
    steered = ((ds.get("steering") or {}).get("latents") or [])
    cc = block.get("crosscoder")
    return {"diff-SAE: share of \u2016\u0394\u2016\u00b2 of the top latent": _float(top[0].get("share")) if top else None,
            "diff-SAE: seed agreement of the top latents (mean)": _float((ds.get("agreement") or {}).get("mean")),
            "diff-SAE: steered latents that raise the reward beyond random directions":
                f"{sum(bool(s.get('beats_null')) for s in steered)} of {len(steered)}" if steered else "-",
            "diff-SAE: mean utility of the explained top latents": _mean(f.get("utility") for f in _first_seed(ds)),
            "base SAE: latents shifted beyond the null":
                f"{_num(shift.get('n_shifted'))} of {_num(shift.get('n_latents'))}" if shift else "-",
            "crosscoder: classes by Latent Scaling": _counts(cc.get("counts")) if cc else "not run"}


def _mean(values) -> float | None:
    numbers = [v for v in (_float(x) for x in values) if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _shift_parts(layer: Any, shift: dict, site: str) -> list[Part]:
    """One block's shared-dictionary shift: the test, what it found (and did not), its top latents explained."""
    if not shift:
        return [Para(f"block {layer}: no shift of a base SAE's latents (no base SAE of the {site}).", note=True)]
    among = shift.get("among_top_mmcs") or {}
    shifted = {int(r["latent"]): [_float(r.get("mean_change")), _float(r.get("z")), _float(r.get("q")),
                                  _float(r.get("rate_change"))] for r in shift.get("top") or []}
    level = _num(_float(shift.get("level")))
    if shift.get("n_shifted"):
        found = (f"{_num(shift.get('n_shifted'))} of {_num(shift.get('n_latents'))} latents shift (q \u2264 {level}: "
                 f"{_num(shift.get('n_rising'))} up, {_num(shift.get('n_falling'))} down)")
    else:
        found = (f"no latent of {_num(shift.get('n_latents'))} shifts at q \u2264 {level} (smallest q "
                 f"{_num(_float(shift.get('min_q')))})")
    test = shift.get("test") or "halves of the base documents (older decompose.json)"
    return [Heading(f"block {layer}: shift of the base SAE's latents", 4),
            Para(f"{found}; test: {test}. Of the top {_num(among.get('of'))} shifted, {_num(among.get('count'))} are "
                 "among the paper\u2019s top-MMCS features.", note=True),
            Table(["latent", "mean change", "z", "q", "firing-rate change", "explanation and top examples",
                   "sim. score", "utility", *_effect_headers(shift.get("features") or [])],
                  _latent_rows(shift.get("features") or [], shifted),
                  numeric={0, 1, 2, 3, 4, 6, 7}, cls="features")]


def decompose_parts(decompose: dict, placebo_results: dict | None = None) -> list[Part]:
    """Per analysed block: the diff-SAE's top latents (share of |Δ|², seed agreement, steering gain against random
    directions, explanation) and the base SAE's most shifted latents; the crosscoder's classes where it ran; the
    placebo tune's measures beside (decompose.json's `placebo`: the first placebo seed's); the utility of the change
    against every placebo seed (`placebo_results`: results.json's placebo section, when given)."""
    placebo = decompose.get("placebo") or {}
    site = SITES.get(decompose.get("site") or "mlp", str(decompose.get("site")))
    placebo_blocks = {b.get("layer"): b for b in placebo.get("blocks") or []}
    parts: list[Part] = [Heading("Which features changed"),
                         Para(Rich(_NOTE.format(t="<sub>tuned</sub>", b="<sub>base</sub>", site=site),
                                   _NOTE.format(t="_tuned", b="_base", site=site)), note=True),
                         Figure('<div class="note">Token shading: activation 0..10.</div>')]
    for block in decompose.get("blocks") or []:
        layer = block.get("layer")
        ds, shift = block.get("diff_sae") or {}, block.get("shift") or {}
        steering = {int(s["latent"]): s for s in ((ds.get("steering") or {}).get("latents") or [])}
        top = {int(t["latent"]): t for t in ds.get("top") or []}
        extra = {j: [_float(t.get("share")), _float(t.get("agreement")), _steer_text(steering.get(j))]
                 for j, t in top.items()}
        agreement = ds.get("agreement") or {}
        first = (ds.get("saes") or [{}])[0]
        parts += [Heading(f"block {layer}: diff-SAE ({ds.get('arch')}, {_num(ds.get('dict_size'))} latents, seeds "
                          f"{', '.join(map(str, ds.get('seeds') or [])) or '-'})", 4),
                  Para(f"explained variance (1 \u2212 FVU, about the mean of \u0394) "
                       f"{_num(_float(first.get('explained')))}; stopped: {first.get('stop_reason') or '-'}; "
                       f"top-{len(top)} seed agreement: mean {_num(_float(agreement.get('mean')))}, "
                       f"{agreement.get('above_0.9', '-')} above 0.9.", note=True),
                  Table(["latent", "share of |\u0394|\u00b2", "seed agreement", "steering gain",
                         "explanation and top examples", "sim. score", "utility", *_effect_headers(_first_seed(ds))],
                        _latent_rows(_first_seed(ds), extra), numeric={0, 1, 2, 5, 6}, cls="features")]
        parts += _shift_parts(layer, shift, site)
        if block.get("crosscoder"):
            parts.append(Para(_crosscoder_text(block["crosscoder"])))
        if layer in placebo_blocks:
            real, other = _block_summary(block), _block_summary(placebo_blocks[layer])
            parts += [Heading(f"block {layer}: the real tune beside the placebo tune", 4),
                      Table(["measure", "tuned", "placebo tune"], [[k, real[k], other[k]] for k in real])]
            if placebo_blocks[layer].get("crosscoder"):
                parts.append(Para("Placebo tune: " + _crosscoder_text(placebo_blocks[layer]["crosscoder"])))
    if placebo:
        parts.append(Table(["measure", "value", "null", "verdict"],
                           [change_utility_row(decompose, placebo_results or placebo)]))
    return parts
