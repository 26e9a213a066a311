"""The package's layers, read from its imports (``ast``): each layer imports only those below it, and no
module imports itself back through others (no circle), whether the import is at the top of a module or
inside a function.

From the bottom: errors and version; the arrays-only numerical core (``featharm._core``: no pandas) and
the formula grammar; shared helpers; designs, model files, tables, data sets; diagnostics; plots; the
report; the model families; the command line and the package's front door.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featharm"

LAYERS = [
    ("_version", "exceptions"),
    ("_core", "formula", "_progress", "_threads", "_dask"),
    ("_validation", "_schema", "_staging"),
    ("design", "persistence", "io", "datasets", "mixed"),
    ("diagnostics",),
    ("plots",),
    ("report",),
    ("models",),
    ("federated",),
    ("cli", "__init__", "__main__"),
]
# The one sanctioned way up: a diagnostics result hands its tables to the plotting layer from its
# ``plot_*`` accessors (as statsmodels' results objects do with statsmodels.graphics), imported when called.
ACCESSORS = {("diagnostics._results", "plots")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"featharm.{module} belongs to no layer: add it to LAYERS in {__file__}")


def _imports() -> dict[str, set[str]]:
    """featharm module -> the featharm modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(path)
        is_pkg = path.name == "__init__.py"
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - node.level + 1] if node.level > 1 else base
                    target = [*anchor, *(node.module.split(".") if node.module else [])]
                elif node.module and node.module.split(".")[0] == "featharm":
                    target = node.module.split(".")[1:]
                else:
                    continue
                names = [".".join(target)] if node.module else []
                # "from . import eb" imports a submodule
                names += [".".join([*target, a.name]) for a in node.names]
                found.update(n for n in names if n)
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("featharm."))
        known = set()
        for name in found:
            while name and not ((PACKAGE / (name.replace(".", "/") + ".py")).exists()
                                or (PACKAGE / name.replace(".", "/") / "__init__.py").exists()):
                name = name.rpartition(".")[0]
            if name and name != mod:
                known.add(name)
        graph[mod] = known
    return graph


def test_every_import_points_down_the_layers():
    up = []
    for mod, targets in _imports().items():
        for t in targets:
            if _layer(t) > _layer(mod) and (mod, t.split(".")[0]) not in ACCESSORS:
                up.append(f"featharm.{mod} imports featharm.{t}")
    assert not up, "imports up the layers:\n" + "\n".join(sorted(up))


def test_no_import_circle():
    graph = _imports()  # the accessors' imports included: they may not close a circle either
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_core_is_arrays_only():
    graph = _imports()
    for path in (PACKAGE / "_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import pandas" not in text and "from pandas" not in text, path
    for mod, targets in graph.items():
        if mod.startswith("_core"):
            assert all(t.startswith("_core") or t == "exceptions" for t in targets), (mod, targets)


def test_diagnostics_plots_and_report_never_import_the_models():
    for mod, targets in _imports().items():
        if mod.split(".")[0] in ("diagnostics", "plots", "report"):
            assert not any(t.split(".")[0] == "models" for t in targets), (mod, targets)
