"""The report's "What tuning changed" section (the diff stage), as HTML and Markdown, read from diff.json's content."""

from __future__ import annotations

from typing import Any

from .format import _esc, _float, _num
from .plots import _figure, _img, _png_uri
from .tables import Raw, explanation_cell, html_table, md_table


def _word_span(token: dict) -> str:
    """A promoted/demoted word coloured by its utility (green positive, red negative, grey none)."""
    u = _float(token.get("utility")) or 0.0
    alpha = min(1.0, abs(u) / 3.0)
    color = f"rgba(26, 127, 55, {alpha:.2f})" if u > 0 else f"rgba(207, 34, 46, {alpha:.2f})" if u < 0 else "#eef0f2"
    title = f"utility {_num(u)}, score {_num(_float(token.get('score', token.get('logit'))))}"
    return (f'<span class="tok" style="background-color: {color}; padding: 0 3px; margin: 1px;" '
            f'title="{_esc(title)}">{_esc(str(token.get("piece", token.get("word", ""))).strip() or "?")}</span>')


def _words_html(tokens: list[dict]) -> str:
    return " ".join(_word_span(t) for t in tokens) if tokens else '<span class="note">none</span>'


def _null_text(null: Any) -> str:
    if not isinstance(null, dict):
        return "no null (empty list)"
    return (f"mean utility {_num(null.get('observed'))} vs random token sets {_num(null.get('null_mean'))} "
            f"± {_num(null.get('null_std'))} (z = {_num(null.get('z'))}, percentile {_num(null.get('percentile'))}; "
            f"{null.get('in_table', '-')} in the table)")


def _steering_plot(curve: dict, reference: dict) -> str:
    fig, (ax,) = _figure(6.0, 3.2)
    rows = curve.get("delta") or []
    xs = [_float(r.get("alpha")) or 0.0 for r in rows]
    ys = [_float(r.get("reward")) or 0.0 for r in rows]
    errs = [_float(r.get("se")) or 0.0 for r in rows]
    ax.errorbar(xs, ys, yerr=errs, color="#d62728", marker="o", label=f"base + α·Δ_{curve.get('layer')}", capsize=3)
    bad = [(x, y) for x, y, r in zip(xs, ys, rows) if not r.get("coherent", True)]
    if bad:
        ax.scatter([x for x, _ in bad], [y for _, y in bad], s=120, facecolors="none", edgecolors="black",
                   label="incoherent (KL above the guard)", zorder=3)
    for r in curve.get("random") or []:
        values = [v for v in (_float(x) for x in r.get("rewards") or []) if v is not None]
        ax.scatter([_float(r.get("alpha")) or 0.0] * len(values), values, color="#7f7f7f", s=14, zorder=2)
    ax.scatter([], [], color="#7f7f7f", s=14, label="random directions, same norm")
    tuned = _float(((reference or {}).get("tuned") or {}).get("reward"))
    if tuned is not None:
        ax.axhline(tuned, color="#9467bd", linestyle="--", linewidth=1, label="tuned model")
    alpha = _float(curve.get("alpha"))
    if alpha:
        ax.axvline(alpha, color="black", linewidth=0.8, alpha=0.4)
    ax.set_xlabel("α")
    ax.set_ylabel("reward (mean ± se)")
    ax.set_title(f"Steering block {curve.get('layer')} (line: reported α = largest coherent)", fontsize="medium")
    ax.legend(fontsize="x-small")
    return _img(_png_uri(fig), f"steering curve of block {curve.get('layer')}")


def _context_html(ctx: dict) -> str:
    tokens, kls = ctx.get("tokens") or [], ctx.get("kl_per_token") or []
    top = max([_float(k) or 0.0 for k in kls] + [1e-9])
    spans = []
    for tok, kl in zip(tokens, kls):
        shown = str(tok).replace("\n", "\u21b5")
        alpha = (_float(kl) or 0.0) / top
        spans.append(f'<span class="tok" style="background-color: rgba(148, 103, 189, {alpha:.2f})" '
                     f'title="KL {_esc(_num(_float(kl)))}">{_esc(shown) or "&#8203;"}</span>')
    return (f'<div class="example"><span class="exinfo">doc {_esc(ctx.get("doc"))}, position {_esc(ctx.get("pos"))}, '
            f'KL {_esc(_num(_float(ctx.get("kl"))))}</span>{"".join(spans)}</div>')


def diff_html(diff: dict) -> str:
    """The diff section: verdicts, promoted/demoted words, steering curves, block ranking, high-KL contexts."""
    out = diff.get("output") or {}
    reference = diff.get("reference") or {}
    parts = [f'<p>Base and tuned compared on the same {_esc(diff.get("n_tokens"))} tokens '
             f'({_esc(diff.get("n_docs"))} documents, split {_esc(diff.get("split"))}); reward '
             f'<code>{_esc(diff.get("reward"))}</code>.</p>']
    verdicts = diff.get("verdicts") or {}
    parts.append(html_table(["measure", "verdict"], [[k, v] for k, v in verdicts.items()]))
    reading = out.get("reading") or {}
    kl = out.get("kl") or {}
    parts.append("<h3>Output: which tokens tuning promotes</h3>"
                 f'<p class="note">{_esc(reading.get("note"))}; KL(tuned‖base) per position: mean {_num(kl.get("mean"))}, '
                 f'p90 {_num(kl.get("p90"))}, max {_num(kl.get("max"))} nats. Words coloured by utility '
                 '(green positive, red negative, grey none).</p>')
    parts.append(f'<p><strong>promoted</strong>: {_words_html(out.get("promoted") or [])}<br>'
                 f'<span class="note">{_esc(_null_text(out.get("promoted_null")))}</span></p>')
    parts.append(f'<p><strong>demoted</strong>: {_words_html(out.get("demoted") or [])}<br>'
                 f'<span class="note">{_esc(_null_text(out.get("demoted_null")))}</span></p>')
    ref_b, ref_t = reference.get("base") or {}, reference.get("tuned") or {}
    parts.append("<h3>Steering base by Δ</h3>"
                 f'<p>On {_esc(reference.get("n_prompts"))} held-out prompts ({_esc(reference.get("new_tokens"))} '
                 f'tokens each): base {_num(_float(ref_b.get("reward")))} ± {_num(_float(ref_b.get("se")))}, '
                 f'tuned {_num(_float(ref_t.get("reward")))} ± {_num(_float(ref_t.get("se")))} '
                 f'(KL to base {_num(_float(ref_t.get("kl")))} nats per token).</p>')
    for curve in diff.get("steering") or []:
        lens = curve.get("lens") or {}
        parts.append(f'<p><strong>block {_esc(curve.get("layer"))}</strong> (|Δ| {_num(_float(curve.get("delta_norm")))}): '
                     f'{_esc(curve.get("verdict"))}</p>')
        parts.append(_steering_plot(curve, reference))
        parts.append(f'<p>tokens base + {_esc(_num(_float(curve.get("alpha"))))}·Δ promotes: '
                     f'{_words_html(curve.get("promoted") or [])}<br><span class="note">'
                     f'{_esc(_null_text(curve.get("promoted_null")))}</span></p>')
        parts.append(f'<p>logit lens of Δ: {_words_html(lens.get("top") or [])}<br>'
                     f'<span class="note">{_esc(lens.get("verdict"))}</span></p>')
    ranking = diff.get("ranking") or {}
    rows = ranking.get("rows") or []
    parts.append("<h3>Causal block ranking</h3>"
                 f'<p class="note">Each block steered by its own change (Δ_L − Δ_(L−1)) at α = '
                 f'{_esc(_num(_float(ranking.get("alpha"))))}; reward gain over the base, paired over prompts; '
                 f'null: random directions of the same norm. {_esc(ranking.get("verdict"))}</p>')
    parts.append(html_table(["rank", "block", "|own change|", "gain", "± se", "gain per unit norm", "random gains", "KL",
                             "coherent"],
                            [[r.get("rank"), r.get("layer"), _float(r.get("own_norm")), _float(r.get("gain")),
                              _float(r.get("gain_se")), _float(r.get("gain_per_norm")),
                              ", ".join(_num(_float(x)) for x in r.get("null_gains") or []) or "-", _float(r.get("kl")),
                              "yes" if r.get("coherent") else Raw("<strong>no</strong>")] for r in rows]))
    blocks = diff.get("blocks") or []
    parts.append("<h3>Mean residual difference per block</h3>")
    parts.append(html_table(["block", "|Δ_L|", "mean |h_base|", "|Δ_L| / |h_base|", "|own change|", "mean |h_t − h_b|"],
                            [[b.get("layer"), _float(b.get("delta_norm")), _float(b.get("base_norm")),
                              _float(b.get("relative")), _float(b.get("own_norm")), _float(b.get("token_diff_norm"))]
                             for b in blocks]))
    contexts = out.get("contexts") or []
    if contexts:
        parts.append("<h3>Highest-KL contexts</h3><p class=\"note\">Shading: KL(tuned‖base) of the next-token "
                     "distribution after each token.</p>" + "".join(_context_html(c) for c in contexts))
    return "".join(parts)


def _words_md(tokens: list[dict]) -> str:
    return ", ".join(f"{str(t.get('piece', t.get('word'))).strip()} ({_num(_float(t.get('utility')))})"
                     for t in tokens) or "none"


def diff_markdown(diff: dict) -> str:
    """The diff section in Markdown: verdicts, words, steering at the reported α, block ranking."""
    out = diff.get("output") or {}
    lines = [md_table(["measure", "verdict"], [[k, v] for k, v in (diff.get("verdicts") or {}).items()]), "",
             f"Promoted words (utility): {_words_md(out.get('promoted') or [])}", "",
             f"Null: {_null_text(out.get('promoted_null'))}", "",
             f"Demoted words (utility): {_words_md(out.get('demoted') or [])}", ""]
    rows = []
    for curve in diff.get("steering") or []:
        at = next((r for r in curve.get("delta") or [] if r.get("alpha") == curve.get("alpha")), {})
        random = next((r for r in curve.get("random") or [] if r.get("alpha") == curve.get("alpha")), {})
        rows.append([curve.get("layer"), _float(curve.get("alpha")), _float(at.get("reward")), _float(at.get("se")),
                     ", ".join(_num(_float(x)) for x in random.get("rewards") or []) or "-", curve.get("verdict")])
    if rows:
        lines += [md_table(["block", "α", "reward", "se", "random directions", "verdict"], rows), ""]
    ranking = diff.get("ranking") or {}
    lines += [md_table(["block", "gain", "se", "gain per unit norm", "coherent"],
                       [[r.get("layer"), _float(r.get("gain")), _float(r.get("gain_se")), _float(r.get("gain_per_norm")),
                         "yes" if r.get("coherent") else "no"] for r in ranking.get("rows") or []]), ""]
    return "\n".join(lines)


def diff_headline_rows(diff: dict) -> list[list[Any]]:
    """The headline's same-token measures: [measure, tuned (or steered) value, its null, verdict]."""
    rows: list[list[Any]] = []
    out = diff.get("output") or {}
    null = out.get("promoted_null") or {}
    if null:
        rows.append(["utility of the words tuning promotes (mean)", _float(null.get("observed")),
                     f"{_num(_float(null.get('null_mean')))} \u00b1 {_num(_float(null.get('null_std')))} (random token sets)",
                     (diff.get("verdicts") or {}).get("output")])
    for curve in diff.get("steering") or []:
        alpha = curve.get("alpha")
        at = next((r for r in curve.get("delta") or [] if r.get("alpha") == alpha), {})
        random = next((r for r in curve.get("random") or [] if r.get("alpha") == alpha), {})
        rewards = [x for x in (_float(v) for v in random.get("rewards") or []) if x is not None]
        rows.append([f"reward of base + {_num(_float(alpha))}\u00b7\u0394 at block {curve.get('layer')}",
                     _float(at.get("reward")),
                     (f"{_num(min(rewards))}..{_num(max(rewards))} ({len(rewards)} random directions)" if rewards
                      else "-"), curve.get("verdict")])
    return rows


def change_utility_row(decompose: dict, placebo: dict | None = None) -> list[Any]:
    """The headline's "utility of the change": the paper's utility score on the top diff-SAE latents' explanations,
    mean +- std over diff-SAE seeds, beside its null (the placebo tune's, where it ran)."""
    u = (decompose or {}).get("utility_of_change") or {}
    value = f"{_num(_float(u.get('mean')))} \u00b1 {_num(_float(u.get('std')))} ({u.get('n', 0)} seeds)"
    p = (placebo or {}).get("utility_of_change") if placebo else None
    if p:
        null = f"{_num(_float(p.get('mean')))} \u00b1 {_num(_float(p.get('std')))} (placebo tune)"
        spread = ((_float(u.get("std")) or 0.0) ** 2 + (_float(p.get("std")) or 0.0) ** 2) ** 0.5
        gap = (_float(u.get("mean")) or 0.0) - (_float(p.get("mean")) or 0.0)
        verdict = ("above the placebo tune by more than twice the combined seed spread" if spread and gap > 2 * spread
                   else "not distinguishable from the placebo tune")
    else:
        null = "no null: the placebo tune (controls.placebo) was off"
        verdict = "no comparison without the placebo tune; read the explanations below"
    return ["utility of the change (top diff-SAE latents' explanations)", value, null, verdict]


def _steer_text(row: dict | None) -> str:
    if not row:
        return "-"
    verdict = "beats every random direction" if row.get("beats_null") else "within the random directions"
    return f"{_num(_float(row.get('gain')))} \u00b1 {_num(_float(row.get('gain_se')))}; {verdict}"


def _latent_rows(features: list[dict], extra: dict[int, list[Any]]) -> list[list[Any]]:
    return [[f.get("feature"), *extra.get(int(f.get("feature", -1)), []), explanation_cell(f), _float(f.get("score")),
             _float(f.get("utility"))] for f in features if isinstance(f, dict)]


def decompose_html(decompose: dict) -> str:
    """Per analysed block: the diff-SAE's top latents (share of |Δ|², seed agreement, steering gain against random
    directions, explanation) and the base SAE's most shifted latents; the crosscoder's classes where it ran."""
    parts = ["<h3>Which features changed</h3>",
             '<p class="note">diff-SAE: an SAE trained on h<sub>tuned</sub> \u2212 h<sub>base</sub> (MLP outputs, same '
             "tokens); its latents ranked by their share of \u2016\u0394\u2016\u00b2, with the max cosine of each to the "
             "other seeds' diff-SAEs (seed agreement), and steering the base model by the latent's decoder row against "
             "random directions of the same norm. Shift: the base model's own SAE encodes both models' activations; "
             "latents whose mean activation moves beyond what two halves of the base activations give (z) are the "
             "change, read through the base SAE's dictionary. Token shading: activation 0..10.</p>"]
    for block in decompose.get("blocks") or []:
        ds, shift = block.get("diff_sae") or {}, block.get("shift") or {}
        steering = {int(s["latent"]): s for s in ((ds.get("steering") or {}).get("latents") or [])}
        top = {int(t["latent"]): t for t in ds.get("top") or []}
        first = [f for f in ds.get("features") or [] if f.get("sae") == f"s{(ds.get('seeds') or [0])[0]}"]
        extra = {j: [_float(t.get("share")), _float(t.get("agreement")), _steer_text(steering.get(j))]
                 for j, t in top.items()}
        agreement = ds.get("agreement") or {}
        parts.append(f"<h4>block {_esc(block.get('layer'))}: diff-SAE ({_esc(ds.get('arch'))}, "
                     f"{_esc(ds.get('dict_size'))} latents, seeds {_esc(ds.get('seeds'))})</h4>"
                     f'<p class="note">top-{len(top)} seed agreement: mean {_num(_float(agreement.get("mean")))}, '
                     f'{_esc(agreement.get("above_0.9", "-"))} above 0.9.</p>')
        parts.append(html_table(["latent", "share of |\u0394|\u00b2", "seed agreement", "steering gain",
                                 "explanation and top examples", "sim. score", "utility"],
                                _latent_rows(first, extra), numeric={0, 1, 2, 5, 6}, cls="features"))
        among = shift.get("among_top_mmcs") or {}
        shifted = {int(r["latent"]): [_float(r.get("mean_change")), _float(r.get("z")), _float(r.get("rate_change"))]
                   for r in shift.get("top") or []}
        parts.append(f"<h4>block {_esc(block.get('layer'))}: shift of the base SAE's latents</h4>"
                     f'<p class="note">{_esc(shift.get("n_shifted"))} of {_esc(shift.get("n_latents"))} latents shift '
                     f'beyond the null ({_esc(shift.get("n_rising"))} up, {_esc(shift.get("n_falling"))} down); of the '
                     f'top {_esc(among.get("of"))}, {_esc(among.get("count"))} are among the paper\u2019s top-MMCS '
                     "features.</p>")
        parts.append(html_table(["latent", "mean change", "z", "firing-rate change", "explanation and top examples",
                                 "sim. score", "utility"], _latent_rows(shift.get("features") or [], shifted),
                                numeric={0, 1, 2, 3, 5, 6}, cls="features"))
        cc = block.get("crosscoder")
        if cc:
            parts.append(f"<p>Crosscoder ({_esc(cc.get('arch'))}): classes by Latent Scaling "
                         f"{_esc(cc.get('counts'))}; by decoder norms alone {_esc(cc.get('norm_counts'))}.</p>")
    return "".join(parts)


def decompose_markdown(decompose: dict) -> str:
    lines = []
    for block in decompose.get("blocks") or []:
        ds, shift = block.get("diff_sae") or {}, block.get("shift") or {}
        first = [f for f in ds.get("features") or [] if f.get("sae") == f"s{(ds.get('seeds') or [0])[0]}"]
        share = {int(t["latent"]): t.get("share") for t in ds.get("top") or []}
        lines += [f"Block {block.get('layer')}, diff-SAE top latents:", "",
                  md_table(["latent", "share", "explanation", "utility"],
                           [[f.get("feature"), _float(share.get(int(f.get("feature", -1)))), f.get("explanation"),
                             _float(f.get("utility"))] for f in first]), "",
                  f"Block {block.get('layer')}, shifted base-SAE latents ({shift.get('n_shifted')} beyond the null):", "",
                  md_table(["latent", "explanation", "utility"],
                           [[f.get("feature"), f.get("explanation"), _float(f.get("utility"))]
                            for f in shift.get("features") or []]), ""]
    return "\n".join(lines)


def same_token_rows(results: dict) -> list[list[Any]]:
    """The headline's same-token rows: the real tune's, the utility of the change, and the placebo tune's beside."""
    rows = diff_headline_rows(results.get("diff") or {})
    placebo = results.get("placebo")
    if results.get("decompose"):
        rows.append(change_utility_row(results["decompose"], placebo))
    if placebo and placebo.get("diff"):
        rows += [[f"placebo tune: {row[0]}", *row[1:]] for row in diff_headline_rows(placebo["diff"])]
    return rows
