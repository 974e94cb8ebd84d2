"""The package's floor plan (ARCHITECTURE.md): layers that import only downwards, no import cycle,
small files and functions, and an ``import dho`` that does not load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dho"

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("dho.files", "dho.device", "dho.coerce", "dho.methods", "dho.preprocess", "dho.heads", "dho.mixing",
     "dho.progress"),
    ("dho.config", "dho.config_keys"),
    ("dho.pretrained", "dho.data"),
    ("dho.teachers",),
    ("dho.backbones", "dho.students", "dho.losses", "dho.gradients", "dho.checkpoint"),
    ("dho.evaluate", "dho.training"),
    ("dho.loop",),
    ("dho.ship", "dho.experiments"),
    ("dho.cli", "dho.__main__"),
]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = {"_train": 110}  # the training loop (loop.train's body), read in one sitting; every other function 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dho modules ``name`` imports anywhere (functions included), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
                 for stmt in node.body for n in ast.walk(stmt)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(name == top or name.startswith(top + ".") for top in layer):
            return i
    raise AssertionError(f"{name} has no layer in LAYERS: place it (and in ARCHITECTURE.md)")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _runtime_imports(name, path, modules) for name, path in modules.items()}


def test_every_module_imports_only_its_layer_and_below(graph):
    upward = [f"{a} -> {b}" for a, targets in graph.items() if a != "dho" for b in targets
              if b != "dho" and _layer(b) > _layer(a)]
    assert not upward, upward
    # the package's own namespace is a facade over everything; only the command line may use it
    assert {a for a, targets in graph.items() if "dho" in targets} <= {m for m in graph if m != "dho" and _layer(m) == len(LAYERS) - 1}


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] - {"dho"}):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_files_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES.get(node.name, 60):
                    too_long.append(f"{path.relative_to(PACKAGE)}: {node.name}() {lines} lines")
    assert not too_long, too_long


def test_import_dho_and_its_command_line_do_not_load_torch():
    code = ("import sys, dho, dho.cli; assert 'torch' not in sys.modules, 'torch'; "
            "assert callable(dho.train) and 'torch' in sys.modules; print(dho.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip() and done.stdout.strip() != "0+unknown"
