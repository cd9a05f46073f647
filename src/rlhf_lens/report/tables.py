"""The pieces every section of the report builds with: HTML tables (`html_table`, with `Raw` for cells that
are already HTML and `Rich` for cells with an HTML and a Markdown form), the "not run" line, a feature's explanation
cell with its highlighted examples, Markdown tables (`md_table`, `md_cell`), and a section written once as parts
(`Heading`, `Para`, `Table`, `Figure`) that `parts_html` and `parts_markdown` render, so summary.md says what the
page says. Section modules import them from here; nothing here imports a section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .format import NOT_RUN, _esc, _float, _num

_MAX_INLINE_EXAMPLES = 1  # the rest of a feature's examples sit in a <details> (no JS needed)


class Raw(str):
    """A table cell that is already HTML (escaped where needed)."""


class Rich(Raw):
    """HTML (the string itself) with its Markdown form (`text`, plain text): a highlighted word list, a coloured
    verdict, an explanation with its examples."""

    text: str

    def __new__(cls, html: str, text: str) -> Rich:
        obj = super().__new__(cls, html)
        obj.text = text
        return obj


def _cell(value: Any) -> tuple[str, bool]:
    """(html, is_number) of one table cell."""
    if isinstance(value, Raw):
        return str(value), False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _esc(_num(value)), True
    return _esc("-" if value is None else value), False


def html_table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None, cls: str = "") -> str:
    """An HTML table; numbers (and the columns named in `numeric`) right-aligned."""
    numeric = numeric or set()
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{_esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            text, is_num = _cell(value)
            cells.append(f'<td{" class=num" if is_num or i in numeric else ""}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    # The wrapper scrolls a wide table sideways instead of widening the page.
    return f'<div class="wrap"><table{attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def not_run_html(what: str = "") -> str:
    """The line a section shows when its stage did not run (`what`: why, or which part)."""
    return f'<p class="not-run">{NOT_RUN}{_esc(": " + what) if what else ""}</p>'


def _token_span(token: Any, activation: Any) -> str:
    text = str(token).replace("\r\n", "\n").replace("\r", "\n")
    shown = text.replace("\n", "\u21b5").replace("\t", "\u21e5")
    value = _float(activation) or 0.0
    alpha = min(1.0, max(0.0, value / 10.0))
    title = f"activation {_num(activation if isinstance(activation, (int, float)) else value)}"
    return (f'<span class="tok" style="background-color: rgba(255, 127, 14, {alpha:.2f})" '
            f'title="{_esc(title)}">{_esc(shown) if shown else "&#8203;"}</span>')


def _example_html(example: dict) -> str:
    tokens = example.get("tokens") or []
    activations = list(example.get("activations") or [])
    activations += [0] * (len(tokens) - len(activations))
    spans = "".join(_token_span(t, a) for t, a in zip(tokens, activations))
    info = f'doc {_esc(example.get("doc", "?"))}, max {_esc(_num(_float(example.get("max_activation"))))}'
    return f'<div class="example"><span class="exinfo">{info}</span>{spans}</div>'


def explanation_cell(feature: dict) -> Raw:
    """A feature's explanation with its first example highlighted inline and the rest in a <details>."""
    explanation = feature.get("explanation")
    parts = [f'<div class="expl">{_esc(explanation) if explanation else "<em>not explained</em>"}</div>']
    examples = [e for e in (feature.get("examples") or []) if isinstance(e, dict)]
    parts += [_example_html(e) for e in examples[:_MAX_INLINE_EXAMPLES]]
    rest = examples[_MAX_INLINE_EXAMPLES:]
    if rest:
        parts.append(f"<details><summary>{len(rest)} more example{'s' if len(rest) > 1 else ''}</summary>"
                     + "".join(_example_html(e) for e in rest) + "</details>")
    return Rich("".join(parts), str(explanation) if explanation else "not explained")


def md_cell(x: Any) -> str:
    """A Markdown table cell: one line, table and HTML characters escaped."""
    if x is None:
        return "-"
    if isinstance(x, Rich):
        x = x.text
    text = _num(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)
    text = " ".join(text.split())
    for ch in "\\|<>`*_[]":
        text = text.replace(ch, "\\" + ch)
    return text or "-"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (numbers as `format_number` writes them)."""
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 3


@dataclass(frozen=True)
class Para:
    """A paragraph: text, or `Rich` (HTML and its Markdown form); `note`: the small grey kind."""

    body: Any
    note: bool = False


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Any]]
    numeric: set[int] = field(default_factory=set)
    cls: str = ""


@dataclass(frozen=True)
class Figure:
    """HTML only (a plot, a note on colours or shading); summary.md has no pictures."""

    html: str


Part = Heading | Para | Table | Figure


def parts_html(parts: list[Part]) -> str:
    """A section's parts as HTML."""
    out = []
    for part in parts:
        if isinstance(part, Heading):
            out.append(f"<h{part.level}>{_esc(part.text)}</h{part.level}>")
        elif isinstance(part, Para):
            body = str(part.body) if isinstance(part.body, Raw) else _esc(part.body)
            out.append(f'<p class="note">{body}</p>' if part.note else f"<p>{body}</p>")
        elif isinstance(part, Table):
            out.append(html_table(part.headers, part.rows, numeric=part.numeric, cls=part.cls))
        else:
            out.append(part.html)
    return "".join(out)


def parts_markdown(parts: list[Part]) -> str:
    """The same parts as Markdown: every heading, paragraph and table; no figures."""
    out = []
    for part in parts:
        if isinstance(part, Heading):
            out.append(f"{'#' * part.level} {md_cell(part.text)}")
        elif isinstance(part, Para):
            out.append(md_cell(part.body))
        elif isinstance(part, Table):
            out.append(md_table(part.headers, part.rows))
    return "\n\n".join(out)
