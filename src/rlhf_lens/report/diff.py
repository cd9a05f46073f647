"""The report's "What tuning changed" section (the diff stage), read from diff.json's content and written once as
parts, so report.html and summary.md say the same; the placebo tune's measures beside the real tune's where it ran.
The feature-level half (the decompose stage) is `report.decompose`."""

from __future__ import annotations

from typing import Any

from .format import _esc, _float, _num, verdict_label
from .plots import _figure, _img, _png_uri
from .tables import Figure, Heading, Para, Part, Rich, Table, parts_html, parts_markdown


def _word_span(token: dict) -> str:
    """A promoted/demoted word coloured by its utility (green positive, red negative, grey none)."""
    u = _float(token.get("utility")) or 0.0
    alpha = min(1.0, abs(u) / 3.0)
    color = f"rgba(26, 127, 55, {alpha:.2f})" if u > 0 else f"rgba(207, 34, 46, {alpha:.2f})" if u < 0 else "#eef0f2"
    title = f"utility {_num(u)}, score {_num(_float(token.get('score', token.get('logit'))))}"
    return (f'<span class="tok" style="background-color: {color}; padding: 0 3px; margin: 1px;" '
            f'title="{_esc(title)}">{_esc(_word(token))}</span>')


def _word(token: dict) -> str:
    return str(token.get("piece", token.get("word", ""))).strip() or "?"


def _words(lead: str, tokens: list[dict]) -> Rich:
    """"lead: w1 w2 ..." with the words coloured by utility (HTML) or followed by it (Markdown)."""
    spans = " ".join(_word_span(t) for t in tokens) if tokens else '<span class="note">none</span>'
    text = ", ".join(f"{_word(t)} ({_num(_float(t.get('utility')))})" for t in tokens) or "none"
    return Rich(f"<strong>{_esc(lead)}</strong>: {spans}", f"{lead} (utility): {text}")


def _null_text(null: Any) -> str:
    """The null of a token list: the test, its p-value (and floor), z and percentile as descriptive numbers."""
    if not isinstance(null, dict):
        return "no null (empty list)"
    test = null.get("test") or "random token sets"
    p = _float(null.get("p"))
    p_text = f"p = {_num(p)}" + (f", {null.get('side')}" if null.get("side") else "") if p is not None else "no p-value"
    text = (f"mean utility {_num(_float(null.get('observed')))} vs {test} {_num(_float(null.get('null_mean')))} "
            f"± {_num(_float(null.get('null_std')))} ({p_text}; z = {_num(_float(null.get('z')))}, percentile "
            f"{_num(_float(null.get('percentile')))}; {null.get('in_table', '-')} in the table")
    rate = _float(null.get("in_table_rate"))
    if rate is not None:
        text += (f", in-table rate {_num(rate)} vs {_num(_float(null.get('in_table_null_rate')))} "
                 f"(p = {_num(_float(null.get('in_table_p')))})")
    return text + ")"


def _strata_text(reading: dict) -> str:
    strata = reading.get("strata")
    if not strata:
        return ""
    return (f" Null: random token sets of the same size with as many tokens from each of {strata} frequency strata "
            "(percentiles of the base model's mean next-token probability over the candidates, adjacent ones merged where few) as the listed words; "
            "p-values one-sided (promoted: above, demoted: below), Holm-adjusted over the two lists in the verdict.")


def _uniform_text(out: dict) -> str | None:
    """The promoted words against the uniform null (not matched for frequency), for comparison."""
    null = (out.get("other") or {}).get("promoted_null_uniform")
    if not isinstance(null, dict):
        return None
    return (f"For comparison, against {null.get('test', 'random token sets')}: null "
            f"{_num(_float(null.get('null_mean')))} ± {_num(_float(null.get('null_std')))}, "
            f"p = {_num(_float(null.get('p')))} (z = {_num(_float(null.get('z')))}); frequent words carry more "
            "sentiment, and the ranking favours frequent tokens, so the verdict uses the frequency-matched null.")


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
    for r in _random_rows(curve):
        values = [v for v in (_float(x) for x in r.get("rewards") or []) if v is not None]
        ax.scatter([_float(r.get("alpha")) or 0.0] * len(values), values, color="#7f7f7f", s=14, zorder=2)
    matched = isinstance(curve.get("random"), dict)
    ax.scatter([], [], color="#7f7f7f", s=14, label="random directions, " + ("same KL" if matched else "same norm"))
    tuned = _float(((reference or {}).get("tuned") or {}).get("reward"))
    if tuned is not None:
        ax.axhline(tuned, color="#9467bd", linestyle="--", linewidth=1, label="tuned model")
    alpha = _float(curve.get("alpha"))
    if alpha:
        ax.axvline(alpha, color="black", linewidth=0.8, alpha=0.4)
    ax.set_xlabel("α")
    ax.set_ylabel("reward (mean ± se)")
    ax.set_title(f"Steering block {curve.get('layer')} (line: reported α, below the first incoherent one)",
                 fontsize="medium")
    ax.legend(fontsize="x-small")
    return _img(_png_uri(fig), f"steering curve of block {curve.get('layer')}")


def _context(ctx: dict) -> Rich:
    """A highest-KL context: its tokens shaded by the KL after each (HTML), or as plain text (Markdown)."""
    tokens, kls = ctx.get("tokens") or [], ctx.get("kl_per_token") or []
    top = max([_float(k) or 0.0 for k in kls] + [1e-9])
    spans = []
    for tok, kl in zip(tokens, kls):
        shown = str(tok).replace("\n", "\u21b5")
        alpha = (_float(kl) or 0.0) / top
        spans.append(f'<span class="tok" style="background-color: rgba(148, 103, 189, {alpha:.2f})" '
                     f'title="KL {_esc(_num(_float(kl)))}">{_esc(shown) or "&#8203;"}</span>')
    text = "".join(str(t) for t in tokens).replace("\n", "\u21b5")
    return Rich(f'<div class="example">{"".join(spans)}</div>', text)


def _random_rows(curve: dict) -> list[dict]:
    """The random directions' readings: one row at the reported α (KL-matched), or one per α (older diffs)."""
    random = curve.get("random")
    return [random] if isinstance(random, dict) else [r for r in random or [] if isinstance(r, dict)]


def _at_alpha(curve: dict) -> tuple[dict, dict]:
    """The steering row and the random directions' row at the reported α."""
    alpha = curve.get("alpha")
    at = next((r for r in curve.get("delta") or [] if r.get("alpha") == alpha), {})
    random = next((r for r in _random_rows(curve) if r.get("alpha") == alpha), {})
    return at, random


def steered_value(curve: dict) -> tuple[Any, str]:
    """(the steered reward at the reported α, the random directions' range): a zero Δ or a reward that is 0 on every
    prompt said in words, so a row of zeros does not read like a bug."""
    at, random = _at_alpha(curve)
    rewards = [x for x in (_float(v) for v in random.get("rewards") or []) if x is not None]
    kind = "matched on KL" if isinstance(curve.get("random"), dict) else "of Δ's norm"
    null = f"{_num(min(rewards))}..{_num(max(rewards))} ({len(rewards)} random directions {kind})" if rewards else "-"
    if _float(curve.get("delta_norm")) == 0:
        return f"\u0394 is zero at block {curve.get('layer')}", "- (nothing to steer with)"
    reward, se = _float(at.get("reward")), _float(at.get("se"))
    if reward == 0 and se == 0:
        return "0 on every prompt (se 0)", null
    return reward, null


def diff_headline_rows(diff: dict) -> list[list[Any]]:
    """The headline's same-token measures: [measure, tuned (or steered) value, its null, verdict]."""
    rows: list[list[Any]] = []
    out = diff.get("output") or {}
    null = out.get("promoted_null") or {}
    if null:
        p = _float(null.get("p"))
        rows.append(["utility of the words tuning promotes (mean)", _float(null.get("observed")),
                     f"{_num(_float(null.get('null_mean')))} \u00b1 {_num(_float(null.get('null_std')))} "
                     f"({null.get('test') or 'random token sets'}{f', p = {_num(p)}' if p is not None else ''})",
                     (diff.get("verdicts") or {}).get("output")])
    for curve in diff.get("steering") or []:
        value, null_text = steered_value(curve)
        rows.append([f"reward of base + {_num(_float(curve.get('alpha')))}\u00b7\u0394 at block {curve.get('layer')}",
                     value, null_text, curve.get("verdict")])
    return rows


def _reference_text(reference: dict, placebo: dict | None) -> str:
    ref_b, ref_t = reference.get("base") or {}, reference.get("tuned") or {}
    text = (f"On {_num(reference.get('n_prompts'))} held-out prompts ({_num(reference.get('new_tokens'))} tokens each): "
            f"base {_num(_float(ref_b.get('reward')))} ± {_num(_float(ref_b.get('se')))}, "
            f"tuned {_num(_float(ref_t.get('reward')))} ± {_num(_float(ref_t.get('se')))} "
            f"(KL to base {_num(_float(ref_t.get('kl')))} nats per token)")
    if placebo:
        ref_p = (placebo.get("reference") or {}).get("tuned") or {}
        text += (f"; placebo tune {_num(_float(ref_p.get('reward')))} ± {_num(_float(ref_p.get('se')))} "
                 f"(KL {_num(_float(ref_p.get('kl')))})")
    return text + "."


def _why_other_rewards(reference: dict, heldout: dict | None) -> str:
    """Why the steering's base and tuned rewards are not the PPO section's held-out ones."""
    own = (f"These are the diff's own prompts (diff.prompts = {_num(reference.get('n_prompts'))}, continued by "
           f"diff.new_tokens = {_num(reference.get('new_tokens'))} tokens, every model on the same random numbers)")
    if not heldout:
        return own + ", not a held-out evaluation after PPO: other prompts and lengths give other figures."
    tokens = heldout.get("tokens")
    return (f"{own}; the held-out reward in \u201c{heldout.get('section', 'PPO fine-tuning')}\u201d is over "
            f"{_num(heldout.get('n'))} other prompts (rlhf.eval_prompts)"
            + (f" continued by {tokens} tokens" if tokens else "")
            + ", so base and tuned score differently there.")


def _steering_rows(diff: dict, tune: str | None) -> list[list[Any]]:
    rows = []
    for curve in diff.get("steering") or []:
        at, _ = _at_alpha(curve)
        value, null = steered_value(curve)
        rows.append([*([tune] if tune else []), curve.get("layer"), _float(curve.get("alpha")), value,
                     _float(at.get("se")) if isinstance(value, float) else "-", null, curve.get("verdict")])
    return rows


def _p(value: Any) -> Any:
    return "-" if value is None else _float(value)


def _null_range(gains: list) -> str:
    values = [v for v in (_float(x) for x in gains or []) if v is not None]
    return f"{_num(min(values))}..{_num(max(values))} ({len(values)})" if values else "-"


def _ranking_parts(ranking: dict) -> list[Part]:
    """The causal block ranking: definition and test, the verdict, the chosen blocks (divergence.rank = causal)."""
    chosen = ranking.get("chosen") or {}
    note = ("Each block's own change: the base model with the tuned model's block L in place of its own (parameter "
            "patching), sampled on held-out prompts (diff.prompts, from documents kept apart from the steering's) with "
            "the base's random numbers; reward gain over the base, paired over prompts. Null: "
            f"{_num(ranking.get('n_random'))} random directions per block added at that block, matched on the KL the "
            "patch causes; p = max(paired sign-flip p, rank p), Holm across the tested blocks. A block whose "
            "parameters did not change is not tested.")
    parts: list[Part] = [Heading("Causal block ranking"), Para(str(ranking.get("verdict"))), Para(note, note=True)]
    if chosen:
        parts.append(Para(f"Analysed blocks (divergence.rank = causal): {chosen.get('note')}."))
    parts.append(Table(
        ["rank", "block", "gain", "± se", "random gains", "KL (samples)", "matched KL", "p paired", "p rank",
         "adjusted p", "beyond null", "coherent"],
        [[r.get("rank"), r.get("layer"), _float(r.get("gain")), _float(r.get("gain_se")),
          _null_range(r.get("null_gains")), _float(r.get("kl")), _float(r.get("matched_kl")), _p(r.get("p_paired")),
          _p(r.get("p_rank")), _p(r.get("p_adjusted")) if r.get("changed", True) else "not changed",
          Rich("<strong>yes</strong>", "yes") if r.get("beyond") else "no",
          "yes" if r.get("coherent") else Rich("<strong>no</strong>", "no")]
         for r in ranking.get("rows") or []]))
    return parts


def diff_parts(diff: dict, placebo: dict | None = None, heldout: dict | None = None) -> list[Part]:
    """The diff section: verdicts, promoted/demoted words, steering curves, block ranking, |Δ| per block, high-KL
    contexts. `placebo`: the placebo tune's diff.json, shown beside; `heldout`: the PPO section's held-out
    evaluation (`n`, `tokens`, `section`), which the steering's rewards are told apart from."""
    out = diff.get("output") or {}
    reference = diff.get("reference") or {}
    parts: list[Part] = [Para(f"Base and tuned compared on the same {_num(diff.get('n_tokens'))} tokens "
                              f"({_num(diff.get('n_docs'))} documents, split {diff.get('split')}); reward "
                              f"{diff.get('reward')}.")]
    if placebo:
        parts.append(Para("Beside the real tune: the placebo tune (controls.placebo), the same PPO against the reward's "
                          "table with its values shuffled over its words. What it changes too, a tune of that size "
                          "changes regardless of the reward."))
    verdicts = diff.get("verdicts") or {}
    other = (placebo or {}).get("verdicts") or {}
    keys = [*verdicts, *(k for k in other if k not in verdicts)]
    parts.append(Table(["measure", "verdict", *(["placebo tune"] if placebo else [])],
                       [[verdict_label(k), verdicts.get(k, "-"), *([other.get(k, "-")] if placebo else [])]
                        for k in keys]))
    reading, kl = out.get("reading") or {}, out.get("kl") or {}
    parts += [Heading("Output: which tokens tuning promotes"),
              Para(f"{reading.get('note')}; KL(tuned‖base) per position: mean {_num(kl.get('mean'))}, "
                   f"p90 {_num(kl.get('p90'))}, max {_num(kl.get('max'))} nats. Words coloured by utility "
                   "(green positive, red negative, grey none)." + _strata_text(reading), note=True),
              Para(_words("promoted", out.get("promoted") or [])), Para(_null_text(out.get("promoted_null")), note=True),
              Para(_words("demoted", out.get("demoted") or [])), Para(_null_text(out.get("demoted_null")), note=True)]
    uniform = _uniform_text(out)
    if uniform:
        parts.append(Para(uniform, note=True))
    if placebo:
        placebo_out = placebo.get("output") or {}
        parts += [Para(_words("placebo tune promotes", placebo_out.get("promoted") or [])),
                  Para(_null_text(placebo_out.get("promoted_null")), note=True)]
    parts += [Heading("Steering base by Δ"), Para(_reference_text(reference, placebo)),
              Para(_why_other_rewards(reference, heldout), note=True)]
    for curve in diff.get("steering") or []:
        lens = curve.get("lens") or {}
        parts += [Para(f"block {curve.get('layer')} (|Δ| {_num(_float(curve.get('delta_norm')))}): {curve.get('verdict')}"),
                  Figure(_steering_plot(curve, reference)),
                  Para(_words(f"tokens base + {_num(_float(curve.get('alpha')))}·Δ promotes", curve.get("promoted") or [])),
                  Para(_null_text(curve.get("promoted_null")), note=True),
                  Para(_words("logit lens of Δ", lens.get("top") or [])), Para(str(lens.get("verdict")), note=True)]
    steering = _steering_rows(diff, "tuned" if placebo else None)
    if placebo:
        steering += _steering_rows(placebo, "placebo tune")
    if steering:
        parts += [Para("At the reported α (the largest coherent one):"),
                  Table([*(["tune"] if placebo else []), "block", "α", "reward", "se", "random directions", "verdict"],
                        steering)]
    parts += _ranking_parts(diff.get("ranking") or {})
    parts += [Heading("Mean residual difference per block"),
              Table(["block", "|Δ_L|", "mean |h_base|", "|Δ_L| / |h_base|", "|own change|", "mean |h_t − h_b|"],
                    [[b.get("layer"), _float(b.get("delta_norm")), _float(b.get("base_norm")), _float(b.get("relative")),
                      _float(b.get("own_norm")), _float(b.get("token_diff_norm"))] for b in diff.get("blocks") or []])]
    contexts = out.get("contexts") or []
    if contexts:
        parts += [Heading("Highest-KL contexts"),
                  Para("Shading: KL(tuned‖base) of the next-token distribution after each token.", note=True),
                  Table(["doc", "position", "KL", "context"],
                        [[c.get("doc"), c.get("pos"), _float(c.get("kl")), _context(c)] for c in contexts],
                        cls="texts")]
    return parts


def diff_html(diff: dict, placebo: dict | None = None, heldout: dict | None = None) -> str:
    """The diff section as HTML (see `diff_parts`)."""
    return parts_html(diff_parts(diff, placebo, heldout))


def diff_markdown(diff: dict, placebo: dict | None = None, heldout: dict | None = None) -> str:
    """The diff section as Markdown: the same parts as the HTML but the plots."""
    return parts_markdown(diff_parts(diff, placebo, heldout))
