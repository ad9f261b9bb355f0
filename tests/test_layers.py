"""The package layout: no import cycle between ser_pipeline subpackages, no upward import, and the
layer rules of DESIGN.md (only flows/ imports prefect, only the tracking package imports mlflow).
Walks the source with ``ast``; imports anywhere in a module count, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower layers first; a module may import its own layer or any layer before it.
LAYERS = [
    {"errors", "config", "registry", "workspace", "heap"},
    {"audio", "augment", "features", "functionals", "torch_features", "ssl_features", "extractors", "manifest", "splits", "metrics", "corpora",
     "explore"},
    {"dataset"},
    {"models"},
    {"inference"},
    {"training"},
    {"experiments"},
    {"tracking"},
    {"pipeline"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "ser_pipeline" and len(parts) > 1 else None


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    """``{room: rooms it imports}`` over ser_pipeline's subpackages and top-level modules."""
    edges: dict[str, set[str]] = {}
    for path in (ROOT / "ser_pipeline").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        src = room(".".join(rel.parts)) if len(rel.parts) > 1 else None
        if src is None or src == "__init__":
            continue
        for module in imports(path):
            dst = room(module)
            if dst and dst != src and dst in RANK:
                edges.setdefault(src, set()).add(dst)
    return edges


def test_every_room_has_a_layer() -> None:
    rooms = {p.stem if p.is_file() else p.name for p in (ROOT / "ser_pipeline").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms - set(RANK) == set(), "add new rooms to LAYERS"


def test_no_upward_import() -> None:
    upward = sorted(f"{a} -> {b}" for a, bs in graph().items() for b in bs if RANK[b] > RANK[a])
    assert upward == []


def test_no_cycle_between_rooms() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for n in sorted(edges) if n not in state and (c := visit(n, []))]
    assert cycles == []


def test_cycle_detector_can_fail() -> None:
    """The walk sees function-level imports (what hid the old cycles)."""
    src = "def f():\n    from ser_pipeline.tracking.runs import log_experiment\n"
    path = ROOT / "tests" / "_tmp_probe.py"
    path.write_text(src)
    try:
        assert "ser_pipeline.tracking.runs" in imports(path)
    finally:
        path.unlink()


def test_prefect_and_mlflow_stay_in_their_rooms() -> None:
    for path in list((ROOT / "ser_pipeline").rglob("*.py")) + list((ROOT / "feature_store").rglob("*.py")):
        names = {m.split(".")[0] for m in imports(path)}
        rel = path.relative_to(ROOT).as_posix()
        assert "prefect" not in names, rel
        if "mlflow" in names:
            assert rel.startswith("ser_pipeline/tracking/") and not rel.endswith(("uri.py", "__init__.py")), rel


def test_library_never_imports_benchmarks_or_flows_at_module_level() -> None:
    for path in list((ROOT / "ser_pipeline").rglob("*.py")) + list((ROOT / "feature_store").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        top |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert not top & {"benchmarks", "flows"}, path
