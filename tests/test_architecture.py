"""The package's shape (docs/design.md): imports point one way, no circles, files stay readable, and there is one loop
over supervision steps outside training."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hybrid"
MAX_LINES = 450

# Which layer a module belongs to; a module may import only from its own layer or lower ones.
LAYERS = {
    "hybrid": 0,  # the package's own __init__ only
    "hybrid.utils": 0,
    "hybrid.config": 0,
    "hybrid.cli": 0,
    "hybrid.core": 1,
    "hybrid.optim": 2,
    "hybrid.models": 2,
    "hybrid.data": 3,
    "hybrid.checkpoint": 3,
    "hybrid.restore": 3,
    "hybrid.eval": 4,
    "hybrid.scaling": 5,
    "hybrid.train": 5,
    "hybrid.__main__": 6,
}
# Layers that must not see each other although neither is above the other.
FORBIDDEN = {("hybrid.train", "hybrid.scaling"), ("hybrid.scaling", "hybrid.train")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_of(module: str) -> str | None:
    matches = [name for name in LAYERS if module == name or (name != "hybrid" and module.startswith(name + "."))]
    return max(matches, key=len) if matches else None


def _imports(path: Path) -> set[str]:
    """Every hybrid module a file imports, at any depth of the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("hybrid")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules and i != name} for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert [m for m in _graph() if _layer_of(m) is None] == []


def test_imports_point_down_never_up_or_sideways_where_forbidden():
    wrong = []
    for module, imports in _graph().items():
        here = _layer_of(module)
        for imported in imports:
            there = _layer_of(imported)
            if LAYERS[there] > LAYERS[here] or (here, there) in FORBIDDEN:
                wrong.append(f"{module} -> {imported}")
    assert wrong == []


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_files_stay_readable():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_one_loop_over_supervision_steps_outside_training():
    """Only the rollout iterates over supervision steps; evaluation, sweeps, traces and the HF forward consume it."""
    loops = []
    for path in PACKAGE.rglob("*.py"):
        if path.parts[-2] == "train":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                call = ast.unparse(node.iter)
                if call.startswith("range(") and any(k in call for k in ("halt_max_steps", "max_steps", "steps")):
                    loops.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {call}")
    assert len(loops) == 1 and loops[0].startswith("core/rollout.py:"), loops
