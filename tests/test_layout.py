"""The architecture as a test: each layer imports only the ones below it, no module imports itself
back in a circle, and no file or function outgrows what a reader can hold (450 lines, 80 lines).

Imports are read from the source (module level and inside functions alike), so a function-level
import does not hide an arrow."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hqbench"
# docs/ARCHITECTURE.md's layers, lowest first: a module may import its own layer and those below.
LAYERS = [
    ("hqbench", "hqbench.paths", "hqbench.stopping", "hqbench.quant", "hqbench.evidence"),
    ("hqbench.models", "hqbench.data"),
    ("hqbench.methods", "hqbench.peers", "hqbench.tasks", "hqbench.callbacks"),
    ("hqbench.reporting", "hqbench.config", "hqbench.runner", "hqbench.multirun", "hqbench.cli", "hqbench.__main__"),
]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 450, 80


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer if module == prefix or module.startswith(prefix + ".")),
               key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def test_no_import_points_up_a_layer():
    up = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m)]
    assert not up, up


def test_no_modules_import_each_other_in_a_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t] if t in path else [m, t]
            if t not in state and (cycle := visit(t, path + [t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (cycle := visit(m, [m])):
            pytest.fail(" -> ".join(cycle))


@pytest.mark.parametrize("path", sorted(MODULES.values()) + [ROOT / "result.py"], ids=lambda p: p.name)
def test_files_and_functions_stay_readable(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name}: {text.count(chr(10))} lines"
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {long}"


def test_the_layers_name_every_module():
    assert all(isinstance(_layer(m), int) for m in MODULES)
