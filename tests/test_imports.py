"""The package's import graph (ARCHITECTURE.md): no cycles, nothing imports ``sdlm.cli``, the method core and the
scoring code keep their distance from the heavy libraries. Every ``import`` statement counts, at module level or
inside a function (a lazy import is still a dependency), read from the source with ``ast``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sdlm"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imported(tree: ast.AST, package: str) -> set[str]:
    """Every name an import statement of ``tree`` reaches (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _edges(source: str, package: str, own: str | None = None) -> set[str]:
    """The package modules that ``source`` imports (a name is mapped to its longest module prefix)."""
    out = set()
    for name in _imported(ast.parse(source), package):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != own:
            out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    g = {}
    for mod, path in MODULES.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        g[mod] = _edges(path.read_text(encoding="utf-8"), package, own=mod)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_nothing_imports_the_cli():
    """No module of the package, no pipeline rule or script, imports ``sdlm.cli`` (they call sdlm functions, or
    run the ``sdlm`` command)."""
    g = graph()
    assert sorted(m for m, deps in g.items() if "sdlm.cli" in deps) == []
    for f in [*(REPO / "pipeline").rglob("*.py"), *(REPO / "pipeline").rglob("*.smk"), REPO / "Snakefile"]:
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from sdlm\.cli import|import sdlm\.cli|from sdlm import cli)", text, re.M), f


@pytest.mark.parametrize("core", ["sdlm.masks", "sdlm.nsp", "sdlm.decoding", "sdlm.decoding.generate",
                                  "sdlm.decoding.blocks", "sdlm.decoding.state", "sdlm.decoding.settings",
                                  "sdlm.decoding.stats"])
def test_the_method_core_stays_small(core):
    """ARCHITECTURE.md: the method core never imports lm-eval, Snakemake, pandas or the CLI."""
    names = _imported(ast.parse(MODULES[core].read_text(encoding="utf-8")), core.rpartition(".")[0])
    heavy = {n for n in names if n.split(".")[0] in ("lm_eval", "snakemake", "pandas")} | (names & {"sdlm.cli"})
    assert heavy == set()
