"""The package's shape: every module imports on its own, there is no import cycle, and library code never
imports a command (commands are thin modules on top of the library)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import encoderlab

SRC = Path(encoderlab.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """encoderlab modules that `name` imports, at module level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "encoderlab":
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_there_is_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_library_code_never_imports_a_command():
    graph = _graph()
    offenders = {
        m: sorted(d for d in deps if d.startswith("encoderlab.commands"))
        for m, deps in graph.items()
        if not m.startswith("encoderlab.commands") and m != "encoderlab.cli"
    }
    assert not {m: d for m, d in offenders.items() if d}


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(m for m in _modules() if m != "encoderlab.__main__")  # __main__ runs the CLI
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    res = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
