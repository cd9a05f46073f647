"""The section "What the reward model rewards" (results.json's `inspect_rm`: inspect_rm/inspect_rm.json, docs/
inspect_rm.md): the verdict beside the tune's overoptimisation point, the cue words in plain words, the token scan
against the gold, the policy's gain split over feature classes as one bar, the RM's SAE features, the feedback probe
and the decomposition's exactness. Written once as parts for the page and summary.md; drawn only in runs that opened
their reward model."""

from __future__ import annotations

from typing import Any

from .format import _esc, _float, _mean_se, _num, _pct, _signed
from .tables import Figure, Heading, Para, Part, Table, explanation_cell, not_run_html, parts_html, parts_markdown

CLASSES = ("gold", "anti-gold", "cue", "other", "error")
"""The gain split's parts, in the bar's order: feature classes, then the SAE's error term."""

CLASS_COLORS = {"gold": "#2ca02c", "anti-gold": "#d62728", "cue": "#ff7f0e", "other": "#9e9e9e", "error": "#8c564b"}

VERDICT_KINDS = {"gold": "the RM rewards what the gold rewards",
                 "flaws": "the policy's gain rests on RM flaws",
                 "undistinguishable": "not distinguishable"}

_BAR_WIDTH = 760  # px of the gain bar's full span
_BAR_HEIGHT = 30


def _quoted(words: list[Any]) -> str:
    return ", ".join(f"'{w}'" for w in words) or "(none)"


def _overoptimisation_text(results: dict) -> str:
    """The PPO gold curve's overoptimisation point in one sentence (report/gold.py's `ppo.gold.curve`)."""
    curve = ((results.get("ppo") or {}).get("gold") or {}).get("curve") or {}
    if not curve.get("has_gold"):
        return "No gold curve of the tune to set beside it (the PPO tune recorded no gold evaluations)."
    point = curve.get("point")
    if not point:
        trend = curve.get("gold_trend")
        return ("The tune's gold curve has no overoptimisation point within the run"
                + (f" (the gold was {trend} at the last evaluation)." if trend else "."))
    low, high = _float(point.get("low")), _float(point.get("high"))
    interval = f" [{_num(low)}, {_num(high)}]" if low is not None and high is not None else ""
    where = f"\u221aKL = {_num(_float(point.get('sqrt_kl')))}{interval} (step ~{_num(point.get('step'))})"
    if point.get("confident"):
        return (f"The tune's gold curve peaked at {where} while the proxy (this RM) kept rising: the "
                "overoptimisation point.")
    share = _float(point.get("share_inside"))
    return (f"The tune's gold curve has a fitted peak at {where}, but only in "
            f"{_pct(share) if share is not None else 'some'} of the prompt resamples: no confident "
            "overoptimisation point.")


def _verdict_parts(section: dict, results: dict) -> list[Part]:
    verdict = section.get("verdict") or {}
    kind = verdict.get("kind")
    # the stage's sentence says it all; its kind in words only where the sentence is missing
    text = verdict.get("text") or (VERDICT_KINDS.get(str(kind), str(kind)) if kind else "no verdict recorded")
    return [Para(f"Verdict: {text}"), Para(_overoptimisation_text(results))]


def cue_sentence(row: dict, random_words: Any, has_placebo: bool) -> str:
    """One cue word in plain words: what the RM pays for it against the random words, what the gold pays."""
    placebo = (f"; the placebo RM's change: {_signed(row.get('placebo_effect'))}"
               if has_placebo and _float(row.get("placebo_effect")) is not None else "")
    return (f"The RM pays for '{row.get('word')}' ({_signed(row.get('effect'))} a text, "
            f"{_num(_float(row.get('z')))} SDs beyond {_num(random_words)} random words, "
            f"p = {_num(_float(row.get('p_holm')))} after Holm), which the gold values at "
            f"{_num(_float(row.get('gold')))} (its change: {_signed(row.get('gold_effect'))}{placebo}).")


def _cue_parts(section: dict) -> list[Part]:
    scan = section.get("token_scan") or {}
    tested = list(scan.get("tested") or [])
    null = scan.get("null") or {}
    random_words = null.get("random_words")
    has_placebo = bool(section.get("placebo_rm"))
    parts: list[Part] = [Heading("Cue words: what the RM pays for that the gold does not")]
    if not tested:
        return parts + [Para("No word was tested by insertion (the scan's shortlist and the pairs' words were empty).")]
    by_word = {str(r.get("word")): r for r in tested}
    # the order the stage gives (by effect); a cue flagged but missing from `cues` is still said
    order = [str(w) for w in scan.get("cues") or [] if str(w) in by_word]
    order += [str(r.get("word")) for r in tested if r.get("cue") and str(r.get("word")) not in order]
    cues = [by_word[w] for w in order if by_word[w].get("cue")]
    if cues:
        parts += [Para(cue_sentence(r, random_words, has_placebo)) for r in cues]
    else:
        top = max(tested, key=lambda r: _float(r.get("effect")) if _float(r.get("effect")) is not None else -1e300)
        parts.append(Para(
            f"None of the {len(tested)} tested words ({_quoted([r.get('word') for r in tested])}) paid beyond the "
            f"{_num(random_words)} random words. The top one, '{top.get('word')}': {_signed(top.get('effect'))} a "
            f"text, {_num(_float(top.get('z')))} SDs from the random words' mean, p = {_num(_float(top.get('p_holm')))}"
            f" after Holm; the gold values it at {_num(_float(top.get('gold')))} (its change: "
            f"{_signed(top.get('gold_effect'))})."))
    if not has_placebo:
        parts.append(Para("The placebo RM on the same insertions: not run (no placebo RM: rm.placebo was off)."))
    rows = [[r.get("word"), r.get("source"), _float(r.get("rm_z")), _float(r.get("gold")),
             f"{_signed(r.get('effect'))} \u00b1 {_num(_float(r.get('effect_se')))}", _float(r.get("z")),
             _float(r.get("p")), _float(r.get("p_holm")), _signed(r.get("gold_effect")),
             _signed(r.get("placebo_effect")) if has_placebo else "not run", "yes" if r.get("cue") else ""]
            for r in tested]
    parts.append(Table(["word", "found by", "scan z", "gold", "RM change \u00b1 se", "z among random words", "p",
                        "p (Holm)", "gold change", "placebo RM change", "cue"], rows, numeric={2, 3, 4, 5, 6, 7, 8, 9}))
    parts.append(Para(
        f"Each word inserted once at a seeded place into each of {_num(scan.get('insertion_texts'))} held-out "
        f"completions; its effect, the mean change of the RM's score, is set among the effects of "
        f"{_num(random_words)} random candidate words the gold values at 0 (mean {_signed(null.get('mean'))}, sd "
        f"{_num(_float(null.get('std')))}): z their SDs, p a prediction p, Holm over the tested words; a cue when "
        f"p (Holm) \u2264 {_num(_float(section.get('level')))} and the gold's change stays within its null (sd "
        f"{_num(_float(null.get('gold_std')))}).", note=True))
    return parts


def _spearman_text(name: str, value: dict | None) -> str:
    if not value:
        return f"{name}: none (the gold has no word table)"
    p = _float(value.get("p"))
    shown_p = "p < 1e-10" if p is not None and p < 1e-10 else f"p = {_num(p)}"
    return (f"{name}: \u03c1 = {_num(_float(value.get('rho')))} ({shown_p}, "
            f"{_num(value.get('n'))} words)")


def _word_rows(rows: list[dict]) -> list[list[Any]]:
    return [[r.get("word"), _float(r.get("rm_z")), _float(r.get("gold"))] for r in rows]


def _scan_parts(section: dict) -> list[Part]:
    scan = section.get("token_scan") or {}
    spearman = scan.get("spearman") or {}
    templates = scan.get("templates") or []
    parts: list[Part] = [
        Heading("Token scan: the RM's score of every word against the gold"),
        Para(f"The RM scored each of {_num(scan.get('candidates'))} whole-word candidates as the last word of "
             f"{len(templates)} neutral opening{'s' if len(templates) != 1 else ''} ({_quoted(templates)}); a word's "
             f"score is its z over the candidates, averaged over the openings. Against the gold "
             f"({section.get('gold')}): {_spearman_text('Spearman over the words the gold table has', spearman.get('table_words'))}; "
             f"{_spearman_text('over all candidates (gold 0 where absent)', spearman.get('all'))}."),
        Heading("The words the RM rewards most", 4),
        Table(["word", "scan z", "gold"], _word_rows(scan.get("top_rewarded") or []), numeric={1, 2}),
        Heading("The gold's top words the RM ignores (scan z \u2264 0)", 4)]
    ignored = scan.get("ignored_gold") or []
    parts.append(Table(["word", "scan z", "gold"], _word_rows(ignored), numeric={1, 2}) if ignored
                 else Para("None: the RM scores every one of the gold's top words above the candidates' mean."))
    parts.append(Heading("The words tuning promoted, read through the RM and the gold", 4))
    promoted = scan.get("promoted")
    if promoted is None:
        parts.append(Para("The diff's promoted words: not run (no diff of this run to read them from)."))
        return parts
    gaming = [r.get("word") for r in promoted if r.get("gaming")]
    parts.append(Para(
        f"Gaming (promoted words the insertion test named cues: the RM pays for them, the gold does not): "
        f"{_quoted(gaming)}." if gaming
        else f"None of the {len(promoted)} promoted words is a cue the insertion test named (the scan z beside each "
             f"is the RM's reading of it as a text's last word, not a test)."))
    parts.append(Table(["word", "scan z", "gold", "gaming"],
                       [[*_word_rows([r])[0], "yes" if r.get("gaming") else ""] for r in promoted], numeric={1, 2}))
    return parts


def _split_parts(split: dict) -> list[tuple[str, dict]]:
    """(class, {mean, se, p, share}) of the gain split, in the bar's order, the classes it has."""
    found = [(name, split.get(name)) for name in CLASSES]  # .get: a split that is not an object is named
    return [(name, part) for name, part in found if part is not None]


def _bar_html(split: dict) -> str:
    """The gain split as one horizontal stacked bar (inline SVG): positive shares to the right of 0, negative to the
    left, each part's width its share; a legend with the shares below."""
    shares = [(name, _float(part.get("share"))) for name, part in _split_parts(split)]
    shares = [(name, s) for name, s in shares if s is not None]
    low = sum(s for _, s in shares if s < 0)
    high = sum(s for _, s in shares if s > 0)
    if high - low <= 0:
        return '<p class="note">No share to draw: every part of the gain is 0.</p>'

    def x(value: float) -> float:
        return (value - low) / (high - low) * _BAR_WIDTH

    rects, right, left = [], 0.0, 0.0
    for name, share in shares:
        if share > 0:
            start, right = right, right + share
        elif share < 0:
            start, left = left + share, left + share
        else:
            continue
        x0, width = x(start), x(start + abs(share)) - x(start)
        label = f"{name} {_pct(share)}"
        text = (f'<text x="{x0 + width / 2:.1f}" y="{_BAR_HEIGHT / 2 + 4:.1f}" text-anchor="middle" font-size="11" '
                f'fill="#fff">{_esc(label)}</text>') if width >= 7 * len(label) else ""
        rects.append(f'<rect x="{x0:.1f}" y="0" width="{width:.1f}" height="{_BAR_HEIGHT}" '
                     f'fill="{CLASS_COLORS[name]}"><title>{_esc(label)}</title></rect>{text}')
    zero = x(0.0)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_BAR_WIDTH}" height="{_BAR_HEIGHT + 16}" role="img" '
           f'aria-label="the policy\'s RM gain split over feature classes">{"".join(rects)}'
           f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="0" y2="{_BAR_HEIGHT + 4}" stroke="#1f2328" stroke-width="1.5"/>'
           f'<text x="{zero:.1f}" y="{_BAR_HEIGHT + 14}" text-anchor="middle" font-size="10" fill="#59636e">0</text>'
           "</svg>")
    legend = " ".join(f'<span style="white-space:nowrap;margin-right:12px"><span style="display:inline-block;'
                      f'width:10px;height:10px;background:{CLASS_COLORS[name]}"></span> {_esc(name)} {_esc(_pct(s))}'
                      "</span>" for name, s in shares)
    return f'<div class="wrap gain-bar">{svg}</div><p class="note">{legend}</p>'


def _gain_parts(section: dict) -> list[Part]:
    gain = section.get("gain") or {}
    parts: list[Part] = [Heading("The policy's RM gain, split")]
    if not gain:
        return parts + [Para("The gain split: not run (no tuned policy's completions were scored).")]
    split = gain.get("split") or {}
    total = gain.get("total") or {}
    shares = "; ".join(f"{name} {_pct(part.get('share'))} ({_signed(part.get('mean'))}, p = {_num(_float(part.get('p')))})"
                       for name, part in _split_parts(split))
    placebo = gain.get("placebo_total")
    placebo_text = (f"The placebo RM's gain on the same completions: {_mean_se(placebo, signed=True)} (p = "
                    f"{_num(_float(placebo.get('p')))})." if placebo
                    else "The placebo RM's gain: not run (no placebo RM: rm.placebo was off).")
    parts += [Para(f"The tuned policy's RM gain over the base on {_num(gain.get('prompts'))} held-out prompts: "
                   f"{_mean_se(total, signed=True)} (p = {_num(_float(total.get('p')))}). Its shares: {shares}. {placebo_text}"),
              Figure(_bar_html(split)),
              Para("Each part: the summed contributions of the features of that class (the SAE's error term apart) to "
                   "the tuned-minus-base score, as a share of the total; p of each part against no change over the "
                   "prompts.", note=True)]
    return parts


def _feature_rows(features: list[dict], error: dict | None) -> list[list[Any]]:
    rows = []
    for f in features:
        margin, align = f.get("margin") or {}, f.get("gold_alignment") or {}
        rows.append([f.get("feature"), f.get("class"), _mean_se(f.get("gain"), signed=True),
                     f"{_mean_se(margin, signed=True)} (q = {_num(_float(margin.get('q')))})",
                     _float(align.get("r")), _float(align.get("q")), ", ".join(map(str, f.get("words") or [])) or "-"])
    if error:
        rows.append(["SAE error", "error", _mean_se(error.get("gain"), signed=True), _mean_se(error.get("margin"), signed=True), None, None,
                     "(what the SAE does not reconstruct)"])
    return rows


def _named_text(section: dict) -> str:
    """How many features the two tests named, and how many they named on their nulls (the level, measured)."""
    named = section.get("named")
    if not isinstance(named, dict):
        return ""
    nulls = named.get("on_nulls") or {}
    text = (f" The tests named {_num(named.get('gold_aligned'))} features gold-aligned and "
            f"{_num(named.get('margin'))} paid on the margin")
    if nulls.get("shuffles"):
        text += (f"; on {_num(nulls['shuffles'])} runs with the gold shuffled over the texts and the pairs' sides "
                 f"swapped at random they named {_num((nulls.get('gold_aligned') or {}).get('mean'))} and "
                 f"{_num((nulls.get('margin') or {}).get('mean'))} on average (at most "
                 f"{_num((nulls.get('gold_aligned') or {}).get('max'))} and {_num((nulls.get('margin') or {}).get('max'))})")
    return text + "."


def _feature_parts(section: dict) -> list[Part]:
    features = list(section.get("features") or [])
    error = section.get("error")
    parts: list[Part] = [Heading("The RM's features")]
    if not features and not error:
        return parts + [Para("The RM's features: not run (no SAE on the RM's states).")]
    parts += [Table(["feature", "class", "gain \u00b1 se", "margin \u00b1 se (q)", "gold alignment r", "q",
                     "fires on (scan words)"], _feature_rows(features, error), numeric={0, 2, 3, 4, 5}),
              Para("Top features by their contribution to the policy's gain (f_i \u00b7 w\u00b7d_i, tuned minus base "
                   "completions); margin: their contribution to the chosen-minus-rejected score of the pairs (a t "
                   "test, q: Benjamini-Hochberg over the features); gold alignment: the correlation over texts of a "
                   "feature's contribution with the gold (Pearson's t test, q: Benjamini-Hochberg). Class: gold / "
                   "anti-gold (aligned), cue (paid on the margin, not aligned), other." + _named_text(section),
                   note=True)]
    explained = [f for f in features if f.get("explanation")]
    if explained:
        parts += [Heading("Feature cards", 4),
                  Table(["feature", "class", "explanation and top examples", "sim. score"],
                        [[f.get("feature"), f.get("class"), explanation_cell(f), _float(f.get("score"))]
                         for f in explained], numeric={0, 3}, cls="features")]
    return parts


def _probe_parts(section: dict) -> list[Part]:
    probe = section.get("probe")
    parts: list[Part] = [Heading("Feedback probe: the policy's features predicting the reward")]
    if not probe:
        return parts + [Para("The feedback probe: not run (inspect_rm.probe was off, or no policy SAEs).")]
    dictionaries = probe.get("dictionaries") or {}
    rows = [[name, d.get("layer"), f"{_pct(d.get('accuracy'))} \u00b1 {_pct(d.get('sd'))}"]
            for name, d in dictionaries.items()]
    parts += [Para(f"A linear probe on each dictionary's features predicts {probe.get('target')} of "
                   f"{_num(probe.get('texts'))} texts, cross-validated over {_num(probe.get('folds'))} folds by prompt "
                   f"(chance {_pct(probe.get('chance'))}); accuracy \u00b1 sd over the folds:"),
              Table(["dictionary", "block", "accuracy \u00b1 sd"], rows, numeric={1, 2})]
    top = probe.get("top_features") or []
    if top:
        parts += [Heading("The probe's top features", 4),
                  Table(["dictionary", "feature", "weight", "explanation"],
                        [[t.get("dictionary"), t.get("feature"), _float(t.get("weight")),
                          t.get("explanation") or "not explained"] for t in top], numeric={1, 2})]
    return parts


def _exactness_part(section: dict) -> Para:
    sae, decomposition = section.get("sae") or {}, section.get("decomposition") or {}
    seconds = section.get("seconds") or {}
    times = ", ".join(f"{name} {_num(_float(s))} s" for name, s in seconds.items())
    return Para(
        f"The RM's SAE ({sae.get('dir')}): {_num(sae.get('dict_size'))} features, BatchTopK k = {_num(sae.get('k'))}, "
        f"FVU {_num(_float(sae.get('fvu')))}, trained on {_num(sae.get('rows'))} states of {_num(sae.get('texts'))} "
        f"texts. The score split score = \u03a3 f_i (w\u00b7d_i) + w\u00b7b_dec + w\u00b7err + b is exact to a max "
        f"relative error of {_num(_float(decomposition.get('max_relative_error')))} over "
        f"{_num(decomposition.get('texts'))} texts (b = {_num(_float(decomposition.get('bias')))}, w\u00b7b_dec = "
        f"{_num(_float(decomposition.get('b_dec_term')))}).{f' Times: {times}.' if times else ''}", note=True)


def inspect_rm_parts(results: dict) -> list[Part]:
    """The section's parts; none for a run that did not open its reward model."""
    section = results.get("inspect_rm")
    if not section:
        return []
    return [*_verdict_parts(section, results), *_cue_parts(section), *_scan_parts(section), *_gain_parts(section),
            *_feature_parts(section), *_probe_parts(section), _exactness_part(section)]


def inspect_rm_html(results: dict) -> str:
    parts = inspect_rm_parts(results)
    return parts_html(parts) if parts else not_run_html("the inspect_rm stage")


def inspect_rm_markdown(results: dict) -> str | None:
    parts = inspect_rm_parts(results)
    return parts_markdown(parts) if parts else None
