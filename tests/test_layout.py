"""The house (issue 12): imports point down only, no circle, ``nn`` stays pure.

Every ``import`` of an ndgeo module anywhere in a file counts, lazy ones inside functions too
(a lazy import is still a dependency; it only moves its cost).
"""

from __future__ import annotations

import ast
from pathlib import Path

import ndgeo

ROOT = Path(ndgeo.__file__).parent

#: Each top-level room and its floor: a room may import only rooms on lower floors.
FLOORS = {
    "errors": 0,
    "bands": 1, "config": 1, "device": 1, "stats": 1, "kernels": 1, "pipeline": 1,
    "nn": 2, "formula": 2, "io": 2,
    "engine": 3, "checkpoint": 3, "sample": 3,
    "processors": 4,
    "jobs": 5, "training": 5,
    "batch": 6, "accessor": 6,
    "cli": 7,
    "__main__": 8, "__init__": 8,
}


def _room(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Top-level rooms of ndgeo that ``path`` imports."""
    rooms = set()
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            if names[0] == "ndgeo":  # from ndgeo import engine
                names = [f"ndgeo.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "ndgeo" and len(parts) > 1 and (
                    (ROOT / parts[1]).is_dir() or (ROOT / f"{parts[1]}.py").is_file()):
                rooms.add(parts[1])  # a room, not a name such as ndgeo.__version__
    return rooms


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        room = _room(path)
        graph.setdefault(room, set()).update(_imports(path) - {room})
    return graph


def test_every_room_has_a_floor():
    assert set(_graph()) <= set(FLOORS), set(_graph()) - set(FLOORS)


def test_imports_point_down_only():
    upward = [(room, dep) for room, deps in _graph().items() for dep in deps
              if FLOORS[dep] >= FLOORS[room]]
    assert not upward, f"imports that do not point down: {upward}"


def test_nn_imports_only_leaves():
    """``nn`` is pure torch: of ndgeo it imports only modules that import nothing of ndgeo but
    ``errors`` (the numpy kernels and the pipeline helper)."""
    graph = _graph()
    for dep in graph["nn"]:
        assert graph.get(dep, set()) <= {"errors"}, (dep, graph.get(dep))
