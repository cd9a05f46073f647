"""report.html: the page (CSS inline, no JavaScript, no network) and one renderer per `SECTIONS` id; the
sections' bodies live by topic in `tuning`, `dictionaries`, `features` and `diff`."""

from __future__ import annotations

import json

from ..verdict import verdict, verdict_level
from .dictionaries import mmcs_html, saes_html
from .diff import decompose_html, diff_html, same_token_rows
from .features import features_html, new_features_html, utility_html
from .format import SECTIONS, _esc, _mean_std, _model_key, _stat
from .plots import _headline_plot
from .tables import Raw, html_table, not_run_html
from .tuning import divergence_html, ppo_html


def _headline_html(results: dict) -> str:
    rows = results.get("headline")
    if not rows:
        return not_run_html()
    table_rows = []
    for row in rows:
        level, _, _ = verdict_level(row.get("base"), row.get("tuned"))
        text = row.get("verdict") or verdict(_stat(row.get("base")), _stat(row.get("tuned")))
        klass = {"clear": "yes", "weak": "maybe"}.get(level, "no")
        table_rows.append([row.get("name", "?"), Raw(_esc(_mean_std(row.get("base")))),
                           Raw(_esc(_mean_std(row.get("tuned")))),
                           Raw(_esc(_mean_std(row.get("control"))) if row.get("control") is not None else "-"),
                           row.get("n_seeds"), Raw(f'<span class="verdict {klass}">{_esc(text)}</span>')])
    table = html_table(["measure", "base", "tuned", "control", "seeds", "verdict"], table_rows, numeric={1, 2, 3, 4},
                       cls="headline")
    plot = _headline_plot(rows)
    note = ('<p class="note">mean \u00b1 std over SAE seeds. Verdict rule: spread = sqrt(std<sub>base</sub>\u00b2 + '
            'std<sub>tuned</sub>\u00b2); |tuned \u2212 base| above 2\u00d7 spread is larger than seed noise, above '
            '1\u00d7 is suggestive, otherwise not distinguishable. "Reward alignment" needs no explainer.</p>')
    diff = results.get("diff")
    if diff:
        same = same_token_rows(results)
        if same:
            table += ('<p>On the same tokens (base and tuned compared directly, no dictionaries; details in '
                      '<a href="#diff">What tuning changed</a>):</p>'
                      + html_table(["measure", "value", "null", "verdict"], same, numeric={1}, cls="headline-diff"))
    return table + note + plot


def _config_html(results: dict) -> str:
    config = results.get("config")
    if not config:
        return not_run_html("no config recorded")
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    return f"<details><summary>resolved config</summary><pre>{_esc(text)}</pre></details>"


def _diff_html(results: dict) -> str:
    diff = results.get("diff")
    if not diff:
        return not_run_html("the diff stage")
    decompose = results.get("decompose")
    return diff_html(diff) + (decompose_html(decompose) if decompose else "")


_SECTION_RENDERERS = {
    "headline": _headline_html, "diff": _diff_html, "ppo": ppo_html, "divergence": divergence_html, "saes": saes_html,
    "mmcs": mmcs_html, "features": features_html, "new-features": new_features_html, "utility": utility_html,
    "config": _config_html,
}


_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
       "DejaVu Sans", "Liberation Sans", sans-serif; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 28px; }
header { padding-top: 26px; }
h1 { font-size: 27px; margin: 0 0 2px; }
h2 { font-size: 20px; margin: 38px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
.meta, .note { color: var(--muted); }
.note { font-size: 13px; margin: 4px 0 10px; }
nav { position: sticky; top: 0; z-index: 1; background: rgba(255, 255, 255, 0.96);
      border-bottom: 1px solid var(--line); padding: 7px 28px; font-size: 14px; }
nav div { max-width: 1124px; margin: 0 auto; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--alt); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.models td:first-child { font-weight: 600; }
table.features td:nth-child(4) { min-width: 440px; }
table.texts td { max-width: 360px; }
.not-run { color: var(--muted); font-style: italic; background: var(--alt); padding: 8px 12px; border-radius: 6px; }
.verdict.yes { color: #1a7f37; font-weight: 600; }
.verdict.maybe { color: #9a6700; }
.verdict.no { color: var(--muted); }
.warn { color: #9a6700; font-size: 12px; display: inline-block; min-width: 200px; }
.wrap { max-width: 100%; overflow-x: auto; }
table.saes { font-size: 12.5px; }
img.plot { display: block; max-width: 100%; height: auto; margin: 8px 0 12px; }
.expl { margin-bottom: 3px; }
.example { font: 12.5px/1.75 ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; margin: 1px 0; }
.exinfo { color: var(--muted); font: 11px system-ui, "DejaVu Sans", sans-serif; margin-right: 8px; }
.tok { white-space: pre-wrap; border-radius: 2px; }
details summary { color: var(--accent); font-size: 12.5px; cursor: pointer; }
pre { background: var(--alt); padding: 10px 12px; border-radius: 6px; font-size: 12.5px; overflow-x: auto; }
footer { color: var(--muted); font-size: 12.5px; padding-top: 30px; padding-bottom: 30px; }
"""


# Nothing leaves the page: images only from data: URIs, styles only inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_html(results: dict) -> str:
    """The whole report page (a string), from results.json's content."""
    from .. import __version__

    title = str(results.get("title") or "rlhf-lens run")
    models = results.get("models") or {}
    model_rows = [[name, models.get(name) if models.get(name) is not None else Raw('<span class="note">none</span>')]
                  for name in sorted(models, key=_model_key)]
    meta = " \u00b7 ".join(_esc(x) for x in (results.get("created"), results.get("run_dir")) if x)
    nav = "\n".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{_esc(name)}</h2>{_SECTION_RENDERERS[sid](results)}</section>'
                       for sid, name in SECTIONS)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f'<header><h1>{_esc(title)}</h1><p class="meta">{meta}</p>'
        + (html_table(["model", "spec"], model_rows, cls="models") if model_rows else "")
        + f"</header>\n<nav><div>{nav}</div></nav>\n<main>{sections}</main>\n"
        f"<footer>Written by rlhf-lens {_esc(__version__)} from results.json.</footer></body></html>\n"
    )
