"""Every module of the package imports on its own, and no two modules import each other in a cycle.

The graph is built from each module's *module-level* imports (the statements that run at import
time: top-level ``import``/``from`` lines, also inside top-level ``try``/``if`` blocks, but not under
``if TYPE_CHECKING``); imports inside functions are deliberate lazy imports and do not count. An
edge goes to the most specific module named (``from usjepa_fast.embed import store`` ->
``usjepa_fast.embed.store``; ``from usjepa_fast.embed import load`` -> ``usjepa_fast.embed``).

"On its own": each module is imported in a fresh child process (forked from a parent that has only
third-party libraries loaded), so a module that works only when another package module happened to
be imported first is caught, and torch custom ops are registered once per process.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import usjepa_fast

PACKAGE_DIR = Path(usjepa_fast.__file__).parent
PACKAGE = "usjepa_fast"
# Optional accelerators: a module whose only problem is one of these missing is fine on this machine.
OPTIONAL = ("triton", "tensorrt", "nvidia", "pycuda")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With,)):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph(modules: dict[str, Path]) -> tuple[dict[str, set[str]], set[str]]:
    """(module -> package modules it imports at module level, external modules imported at module level)."""
    graph: dict[str, set[str]] = {}
    external: set[str] = set()
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in _top_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative import: resolve against this module's package
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    targets.append(sub if sub in modules else mod)
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    while target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        edges.add(target)
                elif target != "__future__":
                    external.add(target)  # dotted: torch.utils.data etc. are imported once, in the parent
        graph[name] = edges
    return graph, external


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_detection_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_resolves_submodules_packages_and_relative_imports(tmp_path, monkeypatch) -> None:
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (root / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nimport numpy\nif TYPE_CHECKING:\n    import usjepa_fast.other\n"
        "def f():\n    import usjepa_fast.other\n"
    )
    (root / "other.py").write_text("try:\n    from usjepa_fast.sub import leaf\nexcept ImportError:\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_DIR", root)
    modules = package_modules()
    graph, external = import_graph(modules)
    assert graph["usjepa_fast.sub"] == {"usjepa_fast.sub.leaf"}
    assert graph["usjepa_fast.sub.leaf"] == set()  # TYPE_CHECKING and function-level imports do not count
    assert graph["usjepa_fast.other"] == {"usjepa_fast.sub.leaf"} and "numpy" in external


def test_no_module_level_import_cycles() -> None:
    graph, _ = import_graph(package_modules())
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


_CHILD = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback
    names, external, optional = json.loads(sys.argv[1])
    for ext in external:  # third-party libraries once, in the parent (fork shares them)
        try:
            importlib.import_module(ext)
        except Exception:
            pass
    assert not any(m == "usjepa_fast" or m.startswith("usjepa_fast.") for m in sys.modules)

    def start(name):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the fresh process: nothing of the package is loaded yet
            os.close(r)
            msg = ""
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in optional:
                    msg = traceback.format_exc(limit=3)
            except BaseException:
                msg = traceback.format_exc(limit=3)
            os.write(w, msg.encode() or b"ok")
            os._exit(0)
        os.close(w)
        return pid, r

    def finish(name, pid, r, failures):
        chunks = []
        while data := os.read(r, 65536):
            chunks.append(data)
        os.close(r)
        os.waitpid(pid, 0)
        out = b"".join(chunks).decode()
        if out != "ok":
            failures[name] = out or "the child process died while importing"

    failures, running = {}, []
    for name in names:  # two children at a time
        running.append((name, *start(name)))
        if len(running) >= 2:
            finish(*running.pop(0), failures)
    for item in running:
        finish(*item, failures)
    print(json.dumps(failures))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork for one fresh process per module")
def test_every_module_imports_on_its_own() -> None:
    modules = package_modules()
    _, external = import_graph(modules)
    names = sorted(m for m in modules if not m.endswith(".__main__"))  # scripts: importing one runs it
    args = json.dumps([names, sorted(external), list(OPTIONAL)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())
