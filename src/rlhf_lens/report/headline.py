"""The headline section, written once as parts (report.html and summary.md render the same): each measure's mean ±
std over SAE seeds for base, tuned and the random-init control, its verdict coloured by direction, a plain word where
the control scores highest, and the same-token measures of the diff stage."""

from __future__ import annotations

from typing import Any

from .decompose import change_utility_row, placebo_kl_row
from .diff import diff_headline_rows
from .format import _esc, _mean_std, control_highest, control_highest_text, headline_verdict
from .plots import _headline_plot
from .tables import Figure, Para, Part, Rich, Table

_RULE = Rich('mean \u00b1 std over SAE seeds. Verdict rule: spread = sqrt(std<sub>base</sub>\u00b2 + '
             'std<sub>tuned</sub>\u00b2); |tuned \u2212 base| above 2\u00d7 spread is larger than seed noise, above '
             '1\u00d7 is suggestive, otherwise not distinguishable. Every measure is expected to be higher in the tuned '
             'model. "Reward alignment" needs no explainer.',
             "mean \u00b1 std over SAE seeds. Verdict rule: spread = sqrt(std_base\u00b2 + std_tuned\u00b2); "
             "|tuned \u2212 base| above 2\u00d7 spread is larger than seed noise, above 1\u00d7 is suggestive, otherwise "
             "not distinguishable. Every measure is expected to be higher in the tuned model. "
             '"Reward alignment" needs no explainer.')

_COLOURS = ('<div class="note">Verdict colours: <span class="colour yes">green</span> higher than base beyond the seed '
            'spread, <span class="colour maybe">amber</span> higher but within twice it, <span class="colour '
            'against">red</span> lower than base (against the expected direction).</div>')


def same_token_rows(results: dict) -> list[list[Any]]:
    """The headline's same-token rows: the real tune's, the utility of the change, and the placebo tune's beside."""
    rows = diff_headline_rows(results.get("diff") or {})
    placebo = results.get("placebo")
    if results.get("decompose"):
        rows.append(change_utility_row(results["decompose"], placebo))
    kl = placebo_kl_row(placebo)
    if kl:
        rows.append(kl)
    if placebo and placebo.get("diff"):
        first = (placebo.get("seeds") or [{}])[0].get("seed")
        label = "placebo tune" if first is None else f"placebo tune (seed {first})"
        rows += [[f"{label}: {row[0]}", *row[1:]] for row in diff_headline_rows(placebo["diff"])]
    return rows


def headline_parts(results: dict) -> list[Part] | None:
    """The section's parts; None when neither the scores stage nor the diff stage ran."""
    rows = results.get("headline") or []
    same = same_token_rows(results) if results.get("diff") else []
    if not rows and not same:
        return None
    parts: list[Part] = []
    if rows:
        highest = control_highest(rows)
        table = []
        for row in rows:
            klass, text = headline_verdict(row)
            control = row.get("control")
            shown = "-" if control is None else _mean_std(control) + (" (highest)" if row.get("name") in highest else "")
            table.append([row.get("name", "?"), _mean_std(row.get("base")), _mean_std(row.get("tuned")), shown,
                          row.get("n_seeds"), Rich(f'<span class="verdict {klass}">{_esc(text)}</span>', text)])
        parts.append(Table(["measure", "base", "tuned", "control", "seeds", "verdict"], table, numeric={1, 2, 3, 4},
                           cls="headline"))
        note = control_highest_text(highest)
        if note:
            parts.append(Para(note))
    if same:
        parts.append(Para(Rich('On the same tokens (base and tuned compared directly, no dictionaries; details in '
                               '<a href="#diff">What tuning changed</a>):',
                               "On the same tokens (base and tuned compared directly, no dictionaries; details in "
                               "What tuning changed):")))
        parts.append(Table(["measure", "value", "null", "verdict"], same, numeric={1}, cls="headline-diff"))
    if rows:
        parts += [Para(_RULE, note=True), Figure(_COLOURS), Figure(_headline_plot(rows))]
    return parts
