"""The layout of src/rlhf_lens, read from the source files with `ast` (the package is not imported):

1. No private name imported across packages: `from <module> import _name` is fine inside one package
   (`rlhf_lens.report.html` from `rlhf_lens.report.format`; the modules directly in `rlhf_lens/` are one
   package), not from a module of another package (`rlhf_lens.diff.run` from `rlhf_lens.harvest`, or
   `rlhf_lens.harvest.run` from `rlhf_lens.store`). Make the name public where it belongs instead.
2. No import circle among the modules of rlhf_lens. Every import statement counts, at module level or
   inside a function (a lazy import still ties two modules together), relative imports resolved.
   `from pkg import name` points at the submodule `pkg.name` when there is one, else at `pkg` itself.
   The one edge left out: a module importing its own enclosing package (`from .. import __version__` in
   `rlhf_lens.report.html`, or a submodule reaching a sibling through its package's `__init__`). A
   package's `__init__` imports its submodules to re-export their names; that the submodules sit inside
   the package is not a circle. An `__init__` importing a module of another package still counts, so a
   circle through a package's front door (a.x -> b, b/__init__ -> b.y, b.y -> a.x) is found. Names a
   package serves lazily through `importlib` (its `__getattr__`) are not seen.
3. No source file over `MAX_LINES` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "rlhf_lens"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its `__init__.py`)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _package_of(name: str) -> str:
    """The package a module belongs to: itself for a package, else its parent."""
    return name if _is_package(name) else name.rpartition(".")[0]


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name an `ImportFrom` reads from."""
    if not node.level:
        return node.module or ""
    base = _package_of(importer).split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(importer: str) -> list[tuple[str, str | None]]:
    """(target module, name imported from it or None) for every import statement in the module's file."""
    tree = ast.parse(MODULES[importer].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(importer, node)
            found += [(source, alias.name) for alias in node.names]
    return [(target, name) for target, name in found if target == ROOT or target.startswith(ROOT + ".")]


def _edges() -> dict[str, set[str]]:
    """Module -> the modules of rlhf_lens it imports (see the module docstring for the rule)."""
    graph = {}
    for importer in MODULES:
        targets = set()
        for source, name in _imports(importer):
            target = f"{source}.{name}" if name and f"{source}.{name}" in MODULES else source
            while target not in MODULES:  # `import rlhf_lens.x.y` of something that is not a module file
                target = target.rpartition(".")[0]
            if target != importer and not importer.startswith(target + "."):
                targets.add(target)
        graph[importer] = targets
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cross_package_private(importer: str, source: str, name: str | None) -> bool:
    """Whether `from source import name` in `importer` takes a private name from another package."""
    if not name or not name.startswith("_") or name.startswith("__") or f"{source}.{name}" in MODULES:
        return False  # a public name, a dunder (__version__), or a submodule
    while source not in MODULES:
        source = source.rpartition(".")[0]
    return _package_of(source) != _package_of(importer)


def test_no_private_name_is_imported_across_packages():
    found = {(importer, source, name) for importer in MODULES for source, name in _imports(importer)
             if _cross_package_private(importer, source, name)}
    assert not found, f"private names imported from another package (make them public where they belong): {sorted(found)}"


def test_no_import_circle():
    circles = {tuple(c) for c in _circles(_edges())}
    assert not circles, f"import circles: {sorted(circles)}"


def test_no_source_file_is_too_long():
    lengths = {str(path.relative_to(SRC)): len(path.read_text(encoding="utf-8").splitlines())
               for path in MODULES.values()}
    long = {path for path, n in lengths.items() if n > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by topic): {sorted((p, lengths[p]) for p in long)}"


def test_the_layout_checks_see_what_they_check():
    """The graph holds the edges it should, and a circle and a cross-package private import are recognised."""
    graph = _edges()
    assert "rlhf_lens.store" in graph["rlhf_lens.harvest.run"]  # `from ..store import ...`
    assert "rlhf_lens.diff.paired" in graph["rlhf_lens.diff.run"]  # `from . import paired`, inside a function
    assert "rlhf_lens.report.html" in graph["rlhf_lens.report"]  # an __init__ re-exporting its submodule
    assert ROOT not in graph["rlhf_lens.report.html"]  # `from .. import __version__`: its own enclosing package
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not _circles({"a": {"b"}, "b": set()})
    assert _cross_package_private("rlhf_lens.diff.run", "rlhf_lens.harvest", "_texts_fingerprint")
    assert _cross_package_private("rlhf_lens.harvest.run", "rlhf_lens.store", "_HEADER_DTYPES")
    assert not _cross_package_private("rlhf_lens.report.html", "rlhf_lens.report.format", "_esc")
    assert not _cross_package_private("rlhf_lens.config", "rlhf_lens.io", "_remove")  # both in rlhf_lens/
    assert not _cross_package_private("rlhf_lens.diff.run", "rlhf_lens.harvest", "local_or_name")
