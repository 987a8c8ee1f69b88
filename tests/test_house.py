"""The house rules the style guide sets, checked on the code itself: a module does one job (at most 400
lines), MLflow is imported only under ffnn/tracking/ and Optuna only under ffnn/tune/, the import graph has no
cycle, and no library's private internals are reached into."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ffnn"
MODULES = sorted(ROOT.rglob("*.py"))
MAX_LINES = 400
FORBIDDEN = ("_run_exitfuncs", "sys.modules[", "._storage", "._trial_id", "warn_dependency_requirement_mismatches")


def _name(path: Path) -> str:
    parts = ["ffnn", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level: bool = False) -> set[str]:
    """The modules ``path`` imports, resolved to full names: at any depth of its code (lazy imports included),
    or with ``top_level`` only those run when it is imported (not in functions, not under TYPE_CHECKING)."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not top_level else (
        n for n in tree.body if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from . import x` imports module x
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_mlflow_only_under_tracking_and_optuna_only_under_tune():
    wrong = []
    for path in MODULES:
        name = _name(path)
        for imported in _imports(path):
            top = imported.split(".")[0]
            if top == "mlflow" and not name.startswith("ffnn.tracking"):
                wrong.append(f"{name} imports {imported}")
            if top == "optuna" and not name.startswith("ffnn.tune"):
                wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_the_import_graph_has_no_cycle():
    """Module-level imports only (a function's import runs later, when both modules are loaded); a package's
    ``__init__`` re-exporting its own modules is not a cycle."""
    names = {_name(p): p for p in MODULES}
    graph = {}
    for name, path in names.items():
        deps = set()
        for imported in _imports(path, top_level=True):
            while imported and imported not in names:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + ".") and \
                    not (path.name == "__init__.py" and imported.startswith(name + ".")):
                deps.add(imported)
        graph[name] = deps
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_private_internals_and_no_quick_exit_outside_the_worker():
    found = [f"{_name(p)}: {word}" for p in MODULES for word in FORBIDDEN if word in p.read_text()]
    assert found == []
    quick = [_name(p) for p in MODULES if re.search(r"\bos\._exit\(", p.read_text())]
    assert quick == ["ffnn.engine.process"]
