"""report.html: the page (CSS inline, no JavaScript, no network) and one renderer per `SECTIONS` id; the
sections' bodies live by topic in `tuning`, `dictionaries`, `features` and `diff`."""

from __future__ import annotations

import json

from .decompose import decompose_parts
from .dictionaries import mmcs_html, saes_html
from .diff import diff_html
from .features import features_html, new_features_html, utility_html
from .format import _esc, _model_key, heldout_of, section_title, shown_sections, tune_moved_text
from .headline import headline_parts
from .inspect_rm import inspect_rm_html
from .reward_model import reward_model_html
from .tables import Raw, html_table, not_run_html, parts_html
from .tracked import RUN_RESULTS, Source, Tracked
from .tuning import divergence_html, ppo_html


def _headline_html(results: dict) -> str:
    parts = headline_parts(results)
    return parts_html(parts) if parts else not_run_html()


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
    return (diff_html(diff, (results.get("placebo") or {}).get("diff"), heldout_of(results))
            + (parts_html(decompose_parts(decompose, results.get("placebo"))) if decompose else ""))


_SECTION_RENDERERS = {
    "headline": _headline_html, "diff": _diff_html, "inspect-rm": inspect_rm_html, "reward-model": reward_model_html, "ppo": ppo_html, "divergence": divergence_html, "saes": saes_html,
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
.verdict.yes, .colour.yes { color: #1a7f37; font-weight: 600; }
.verdict.maybe, .colour.maybe { color: #9a6700; }
.verdict.no { color: var(--muted); }
.verdict.against, .colour.against { color: #cf222e; font-weight: 600; }
.verdict.against-maybe { color: #cf222e; }
.alert { background: #fff8c5; border-left: 4px solid #9a6700; padding: 8px 12px; border-radius: 4px; }
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


def render_html(results: dict, sections: tuple[str, ...] | None = None, source: Source = RUN_RESULTS) -> str:
    """The whole report page (a string), from results.json's content; `sections`: the ids to draw (default: all).

    Content of the wrong shape (an int where an object belongs) is a UserError naming the field (`source` says which
    file it came from)."""
    from .. import __version__

    tracked = Tracked(results, source)
    content = tracked.content
    title = str(content.get("title") or "rlhf-lens run")
    header = tracked.draw("the header", _header_html, content)
    chosen = [sid for sid in shown_sections(content) if sections is None or sid in sections]
    names = {sid: tracked.draw(f"the title of section {sid!r}", section_title, sid, content) for sid in chosen}
    nav = "\n".join(f'<a href="#{sid}">{_esc(names[sid])}</a>' for sid in chosen)
    body = "".join(f'<section id="{sid}"><h2>{_esc(names[sid])}</h2>'
                   + tracked.draw(f"the section \"{names[sid]}\"", _SECTION_RENDERERS[sid], content)
                   + "</section>" for sid in chosen)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"{header}\n<nav><div>{nav}</div></nav>\n<main>{body}</main>\n"
        f"<footer>Written by rlhf-lens {_esc(__version__)} from {_esc(source.file)}.</footer></body></html>\n"
    )


def _header_html(results: dict) -> str:
    """Title, date, the models, and, when the tune barely moved the held-out reward, a warning before any verdict."""
    models = results.get("models") or {}
    model_rows = [[name, models.get(name) if models.get(name) is not None else Raw('<span class="note">none</span>')]
                  for name in sorted(models, key=_model_key)]
    meta = " \u00b7 ".join(_esc(x) for x in (results.get("created"), results.get("run_dir")) if x)
    moved = tune_moved_text(results)
    return (f'<header><h1>{_esc(results.get("title") or "rlhf-lens run")}</h1><p class="meta">{meta}</p>'
            + (html_table(["model", "spec"], model_rows, cls="models") if model_rows else "")
            + (f'<p class="alert">{_esc(moved)}</p>' if moved else "") + "</header>")
