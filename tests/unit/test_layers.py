"""The package's map holds: every module imports only from its own layer or the ones below,
there is no import cycle (type-only and function-level imports count), and nothing in the
repository edits ``sys.path`` or ``PYTHONPATH``: scripts, SLURM jobs and tests import the
installed ``brainmri`` like any program."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "brainmri"
# Bottom to top: foundations; data, models, scoring; reporting; training; cluster; evaluation.
LAYERS = {
    "brainmri": 0,
    "brainmri.errors": 0,
    "brainmri.config": 0,
    "brainmri.records": 0,
    "brainmri.rundir": 0,
    "brainmri.weights": 0,
    "brainmri.shell": 0,
    "brainmri.data": 1,
    "brainmri.models": 1,
    "brainmri.scoring": 1,
    "brainmri.reporting": 2,
    "brainmri.training": 3,
    "brainmri.cluster": 4,
    "brainmri.evaluation": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    while module not in LAYERS:
        if "." not in module:
            raise AssertionError(f"{module} has no layer: add it to LAYERS (and to docs/development.md)")
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def brainmri_imports(path: Path, modules: set[str]) -> set[str]:
    """Every brainmri module ``path`` imports, anywhere in the file (functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("brainmri")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainmri"):
            for alias in node.names:  # `from brainmri.x import y`: y may be a module itself
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: brainmri_imports(path, set(files)) - {name} for name, path in files.items()}


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
        for m, imports in import_graph().items()
        for i in sorted(imports)
        if layer(i) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_layer_map_is_checked_and_the_check_can_fail():
    assert layer("brainmri.data.cache") == 1 and layer("brainmri.evaluation.labels") == 5
    graph = import_graph()
    assert "brainmri.data.samples" in graph["brainmri.data.scan"]  # the parser sees real imports
    assert "brainmri.cluster.sweep" in graph["brainmri.evaluation.labels"]  # function-level ones too


def test_nothing_edits_the_import_path():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.sh", "*.sbatch", "*.cfg", "*.toml", ".ci/run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    needles = ("sys.path.insert", "sys.path.append", "sys.path[", "PYTHONPATH")
    offenders = [
        f"{name}:{i}"
        for name in tracked
        if (REPO / name).is_file() and name != "tests/unit/test_layers.py"
        for i, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1)
        if any(n in line for n in needles)
    ]
    assert not offenders, offenders


def test_launch_holds_entry_points_only():
    scripts = sorted((REPO / "launch").glob("*.py"))
    assert sum(len(p.read_text().splitlines()) for p in scripts) < 700
    for script in scripts:
        tree = ast.parse(script.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        siblings = {p.stem for p in scripts}
        assert not imported & siblings, f"{script.name} imports another entry script: {imported & siblings}"
        assert "__main__" in script.read_text(), script.name
