"""The report: a run's `results.json` rendered as one self-contained `report.html` and a `summary.md`.

The HTML embeds its plots as base64 PNG `data:` URIs (drawn with matplotlib's Agg renderer from the
numbers in results.json), carries its CSS inline, needs no JavaScript, and forbids every network request
through a Content-Security-Policy, so it opens the same offline, mailed or archived. Every section has a
stable id (`SECTIONS`); a section whose stage was skipped (missing or null in results.json) says "not run".
All text from the run is HTML-escaped.

A folder of `rlhf-lens diff` (diff.json, no results.json) is rendered on its own: the headline's same-token rows
and "What tuning changed". Content of the wrong shape is one line naming the field (`tracked`).

Parts: `format` (numbers, statistics and table rows for people; the number formatting itself and the
verdict rule live in `rlhf_lens.verdict`, shared with the pipeline), `tables` (HTML and Markdown tables, the
other pieces every section builds with, and sections written once as parts for both), `plots` (matplotlib
figures as data URIs), `tracked` (results as read, each field knowing its path), `html` (the page), its sections
by topic `headline`, `tuning` (PPO, divergence), `dictionaries` (SAEs, MMCS), `features` (top and new features,
utility), `diff` and `decompose` (what tuning changed), `reward_model` and
`inspect_rm` (the learned reward model, opened), and `markdown` (summary.md).
A new section: an id in `format.SECTIONS`, a renderer in the topic's module registered in
`html._SECTION_RENDERERS` and `markdown._MD_SECTIONS`, and its results.json key in `RESULT_SECTIONS`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..io import read_json, write_text
from .format import NOT_RUN, SECTIONS
from .html import render_html
from .markdown import render_markdown
from .tracked import DIFF_RESULTS

__all__ = ["NOT_RUN", "RESULT_SECTIONS", "SECTIONS", "render_html", "render_markdown", "write_report"]

RESULT_SECTIONS = {
    "saes": "list", "mmcs": "list", "features": "list", "new_features": "list", "headline": "list",
    "models": "object", "config": "object", "ppo": "object", "divergence": "object", "utility": "object",
    "new_feature_counts": "object", "diff": "object", "decompose": "object", "placebo": "object",
    "reward_model": "object", "inspect_rm": "object",
}
"""The sections of results.json the report reads, each a list of objects or an object (or null: not run);
the pipeline writes them, `write_report` checks them, in this order."""


DIFF_FORMAT = "rlhf-lens.diff"  # diff.run.FORMAT, written here since importing it would import torch

DIFF_SECTIONS = ("headline", "diff")
"""What a `rlhf-lens diff` folder's report shows: the same-token rows of the headline and "What tuning changed"."""


def write_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Render RUN_DIR/results.json into RUN_DIR/report.html and RUN_DIR/summary.md (atomic writes); a folder of
    `rlhf-lens diff` (diff.json, no results.json) gets the diff's sections alone.

    Returns (report.html, summary.md). Raises UserError when results.json (or diff.json) is missing or malformed;
    files already there are then left as they were.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; give the --out folder of `rlhf-lens run` (or of `rlhf-lens diff`)")
    if not (run_dir / "results.json").is_file() and (run_dir / "diff.json").is_file():
        results = _load_diff(run_dir / "diff.json")
        page = render_html(results, DIFF_SECTIONS, DIFF_RESULTS)
        summary = render_markdown(results, DIFF_SECTIONS, DIFF_RESULTS)
    else:
        results = _load_results(run_dir)
        page, summary = render_html(results), render_markdown(results)
    html_path, md_path = run_dir / "report.html", run_dir / "summary.md"
    write_text(html_path, page)
    write_text(md_path, summary)
    return html_path, md_path


def _load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: no such file; run `rlhf-lens run --out {run_dir}` first (it writes results.json), "
                        "or give a folder of `rlhf-lens diff` (it holds diff.json)")
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


def _load_diff(path: Path) -> dict:
    """A diff folder's diff.json as the report's content: the title, the two models, and the diff section."""
    diff = read_json(path)
    if not isinstance(diff, dict) or diff.get("format") != DIFF_FORMAT:
        raise UserError(f"{path}: not a diff.json of `rlhf-lens diff` (no \"format\": \"{DIFF_FORMAT}\"); "
                        "regenerate it with `rlhf-lens diff`")
    models = {"base": diff.get("base"), "tuned": diff.get("tuned")}
    return {"title": f"rlhf-lens diff: {models['base']} vs {models['tuned']}", "models": models, "diff": diff}
