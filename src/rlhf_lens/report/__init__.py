"""The report: a run's `results.json` rendered as one self-contained `report.html` and a `summary.md`.

The HTML embeds its plots as base64 PNG `data:` URIs (drawn with matplotlib's Agg renderer from the
numbers in results.json), carries its CSS inline, needs no JavaScript, and forbids every network request
through a Content-Security-Policy, so it opens the same offline, mailed or archived. Every section has a
stable id (`SECTIONS`); a section whose stage was skipped (missing or null in results.json) says "not run".
All text from the run is HTML-escaped.

Parts: `format` (numbers, statistics and table rows for people; the number formatting itself and the
verdict rule live in `rlhf_lens.verdict`, shared with the pipeline), `tables` (HTML and Markdown tables and
the other pieces every section builds with), `plots` (matplotlib figures as data URIs), `html` (the page),
its sections by topic `tuning` (PPO, divergence), `dictionaries` (SAEs, MMCS), `features` (top and new
features, utility) and `diff` (what tuning changed, HTML and Markdown), and `markdown` (summary.md).
A new section: an id in `format.SECTIONS`, a renderer in the topic's module registered in
`html._SECTION_RENDERERS`, its table in `markdown.render_markdown`, and its results.json key in
`RESULT_SECTIONS`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..io import read_json, write_text
from .format import NOT_RUN, SECTIONS
from .html import render_html
from .markdown import render_markdown

__all__ = ["NOT_RUN", "RESULT_SECTIONS", "SECTIONS", "render_html", "render_markdown", "write_report"]

RESULT_SECTIONS = {
    "saes": "list", "mmcs": "list", "features": "list", "new_features": "list", "headline": "list",
    "models": "object", "config": "object", "ppo": "object", "divergence": "object", "utility": "object",
    "new_feature_counts": "object", "diff": "object", "decompose": "object", "placebo": "object",
}
"""The sections of results.json the report reads, each a list of objects or an object (or null: not run);
the pipeline writes them, `write_report` checks them, in this order."""


def write_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Render RUN_DIR/results.json into RUN_DIR/report.html and RUN_DIR/summary.md (atomic writes).

    Returns (report.html, summary.md). Raises UserError when results.json is missing or malformed;
    files already there are then left as they were.
    """
    run_dir = Path(run_dir)
    results = _load_results(run_dir)
    page = render_html(results)
    summary = render_markdown(results)
    html_path, md_path = run_dir / "report.html", run_dir / "summary.md"
    write_text(html_path, page)
    write_text(md_path, summary)
    return html_path, md_path


def _load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; give the --out folder of `rlhf-lens run`")
    if not path.is_file():
        raise UserError(f"{path}: no such file; run `rlhf-lens run --out {run_dir}` first (it writes results.json)")
    results = read_json(path)
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a JSON object of sections, got {type(results).__name__}; "
                        "regenerate it with `rlhf-lens run`")
    for key, kind in RESULT_SECTIONS.items():
        value = results.get(key)
        if value is None:
            continue
        if kind == "list" and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise UserError(f"{path}: section {key!r} must be a list of objects or null; regenerate it with `rlhf-lens run`")
        if kind == "object" and not isinstance(value, dict):
            raise UserError(f"{path}: section {key!r} must be an object or null; regenerate it with `rlhf-lens run`")
    return results
