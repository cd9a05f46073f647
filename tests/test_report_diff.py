"""The report of what tuning changed: a `rlhf-lens diff` folder rendered on its own (from a real diff of a planted
change), and summary.md saying what report.html says with the crosscoder and the placebo tune on."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from conftest import assert_user_error, planted_tune, run_cli
from report_results import make_results, section, with_placebo_and_crosscoder
from rlhf_lens.report import render_html, render_markdown

PLANTED_BLOCK = 1


@pytest.fixture(scope="module")
def diff_folder(tmp_path_factory, tiny_model_dir, corpus_file):
    """`rlhf-lens diff` of the tiny model against a copy whose block-1 MLP adds a vector pushing four words, at blocks
    0 and 1: block 0 is before the change (Δ is exactly zero there), block 1 carries it."""
    root = tmp_path_factory.mktemp("report-diff")
    tuned, _, words = planted_tune(tiny_model_dir, root, 2.0, PLANTED_BLOCK)
    table = root / "table.tsv"
    table.write_text("".join(f"{w}\t3\n" for w in words))
    out = root / "diff"
    run_cli("diff", tiny_model_dir, tuned, "--corpus", corpus_file, "--reward", f"table:{table}", "--layers", "0,1",
            "--out", out, "--max-docs", "12", "--prompts", "8", "--new-tokens", "6", "--alphas", "0,1",
            "--random-directions", "2", "--null-sets", "50", "--rank-spread", "0", check=True)
    return out


def test_a_diff_folder_is_rendered_on_its_own(diff_folder):
    """Item 13: `rlhf-lens report DIR` on a diff folder writes report.html and summary.md there, with the diff's
    section as a run's report shows it (and the headline's same-token rows), instead of "no results.json"."""
    result = run_cli("report", diff_folder, check=True)
    assert "report.html" in result.stdout and "summary.md" in result.stdout
    diff = json.loads((diff_folder / "diff.json").read_text())
    page = (diff_folder / "report.html").read_text()
    md = (diff_folder / "summary.md").read_text()
    assert re.findall(r'<section id="([\w-]+)">', page) == ["headline", "diff"]
    assert re.findall(r"^## (.+)$", md, re.M) == ["Headline numbers", "What tuning changed"]
    assert f"rlhf-lens diff: {diff['base']} vs {diff['tuned']}" in page and "from diff.json" in page
    body = section(page, "diff")
    assert render_html({"diff": diff}, ("diff",)).split("<main>")[1].split("</main>")[0] == \
        f'<section id="diff">{body}</section>'
    for word in (t["word"] for t in diff["output"]["promoted"]):
        assert word in body and word in md
    assert diff["output"]["verdict"] in body and "data:image/png;base64," in body
    # Item 12: verdicts in words, and a Δ of exactly zero said as such rather than as a row of zeros.
    assert "steering by \u0394 at block 1" in body and "logit lens of \u0394 at block 0" in body
    assert "steering_1" not in page and "lens_0" not in page
    assert diff["blocks"][0]["delta_norm"] == 0
    headline = section(page, "headline")
    assert "\u0394 is zero at block 0" in headline and "\u0394 is zero at block 0" in md
    assert "not a held-out evaluation after PPO" in body


def test_a_malformed_diff_json_is_one_line_naming_the_field(diff_folder, tmp_path):
    """Item 5 for a diff folder: the field is named as it is in diff.json; the report files stay as they were."""
    folder = tmp_path / "diff"
    folder.mkdir()
    diff = json.loads((diff_folder / "diff.json").read_text())
    (folder / "report.html").write_text("old page")
    for plant, fragment in (({**diff, "steering": [3]}, "diff.json: steering[0] must be an object, not a number"),
                            ({**diff, "output": {**diff["output"], "promoted": {"love": 1}}},
                             "diff.json: output.promoted must be a list, not an object"),
                            ({k: v for k, v in diff.items() if k != "format"}, "not a diff.json of `rlhf-lens diff`")):
        (folder / "diff.json").write_text(json.dumps(plant))
        assert_user_error(run_cli("report", folder), fragment, "rlhf-lens diff")
    assert (folder / "report.html").read_text() == "old page" and not (folder / "summary.md").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("report", empty), "results.json", "rlhf-lens diff")


class _Said(HTMLParser):
    """What report.html says in one section: each table as rows of cell texts, and each paragraph's text. A feature's
    explanation cell counts as its explanation (its highlighted examples are the page's alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.paragraphs: list[str] = []
        self._text: list[str] | None = None
        self._skip = 0
        self._expl: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        klass = dict(attrs).get("class") or ""
        if self._skip or tag == "details" or (tag == "div" and "example" in klass and self._expl is not None):
            self._skip += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "p", "h3", "h4"):
            self._text, self._expl = [], None
        elif tag == "div" and klass == "expl":
            self._expl = []

    def handle_endtag(self, tag):
        if self._skip:
            self._skip -= 1
            return
        if tag in ("td", "th") and self._text is not None:
            self.tables[-1][-1].append(_plain("".join(self._expl if self._expl is not None else self._text)))
            self._text, self._expl = None, None
        elif tag in ("p", "h3", "h4") and self._text is not None:
            self.paragraphs.append(_plain(" ".join(self._text)))  # std<sub>base</sub>: the words std and base
            self._text = None

    def handle_data(self, data):
        if self._skip or self._text is None:
            return
        (self._expl if self._expl is not None else self._text).append(data)


def _plain(text: str) -> str:
    return " ".join(text.replace("\u200b", "").split())


def _md_tables(md: str) -> list[list[str]]:
    """Every row of every Markdown table, as unescaped cell texts."""
    rows = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([_plain(re.sub(r"\\(.)", r"\1", c)) for c in cells])
    return rows


def test_summary_says_what_the_page_says_with_crosscoder_and_placebo(tmp_path):
    """Item 19: with decompose.crosscoder and controls.placebo on, every table row of the page's headline and "What
    tuning changed" is a row of summary.md, and every paragraph's words are in it: the crosscoder's classes and the
    placebo tune's measures beside the real tune's included."""
    results = with_placebo_and_crosscoder(make_results())
    page, md = render_html(results), render_markdown(results)
    md_sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", md, re.M | re.S))
    for sid, title in (("headline", "Headline numbers"), ("diff", "What tuning changed")):
        said = _Said()
        said.feed(section(page, sid))
        md_rows, md_text = _md_tables(md_sections[title]), _plain(re.sub(r"\\(.)", r"\1", md_sections[title]))
        rows = [row for table in said.tables for row in table]
        assert len(rows) > 5
        for row in rows:
            assert row in md_rows, (title, row)
        for paragraph in said.paragraphs:
            missing = [w for w in re.findall(r"\w+", paragraph) if w not in md_text]
            assert not missing, (title, paragraph, missing)
    diff = md_sections["What tuning changed"]
    assert "shared 40, tuned-only 2, base-only 1, dead 21" in diff and "shared 50, tuned-only 0" in diff
    assert "| words tuning promotes | tuning promotes reward-laden words (z=20.2) | no more reward-laden" in diff
    assert "| placebo tune | 3 |" in diff and "placebo tune promotes (utility): plot (0), scene (0)" in diff
    assert "block 3: the real tune beside the placebo tune" in diff and "| base SAE: latents shifted beyond the null |" \
        " 1 of 32 | 0 of 32 |" in diff
