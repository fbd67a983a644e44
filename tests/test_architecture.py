"""The layering ARCHITECTURE.md draws, checked on the code: no import runs upward, none closes a
circle, only the Ray adapter imports ray, schemas import nothing of ours, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import mmcurate

ROOT = Path(mmcurate.__file__).parent
# top to bottom; a module may import its own package and anything below it
LAYERS = {
    "__main__": 9,
    "cli": 8,
    "demo": 7,
    "jobs": 6,
    "engine": 5,
    "stages": 4,
    "filters": 3,
    "algos": 2, "clients": 2, "ingest": 2,
    "storage": 1,
    "schemas": 0,
    "__init__": -1,  # the package itself: its version, and nothing of ours
}
RAY_ADAPTER = "mmcurate.engine.executor"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours an import names (`from a.b import c` names a.b.c when that is a module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules of ours, top-level packages of others) that a module imports, lazily or not."""
    ours, others = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] if base.startswith("mmcurate") else [base]
        else:
            continue
        for target in targets:
            if target == "mmcurate" or target.startswith("mmcurate."):
                found = resolve(target, known)
                if found and found != name:
                    ours.add(found)
            else:
                others.add(target.split(".")[0])
    return ours, others


def layer(name: str) -> tuple[str, int]:
    part = name.split(".")[1] if "." in name else "__init__"
    return part, LAYERS[part]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known)[0] for name, path in known.items()}


def test_every_module_has_a_layer():
    assert [n for n in modules() if ("." in n and n.split(".")[1] not in LAYERS)] == []


def test_no_import_runs_upward():
    upward = []
    for name, targets in graph().items():
        part, rank = layer(name)
        for target in targets:
            tpart, trank = layer(target)
            if tpart != part and trank >= rank:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_import_circles():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert circles == []


def test_only_the_ray_adapter_imports_ray_and_schemas_import_nothing_of_ours():
    known = modules()
    with_ray = [n for n, p in known.items() if "ray" in imports(n, p, known)[1]]
    assert with_ray == [RAY_ADAPTER]
    assert {n: t for n, t in graph().items() if n.startswith("mmcurate.schemas") and
            any(not x.startswith("mmcurate.schemas") for x in t)} == {}
    assert graph()["mmcurate"] == set()


def test_modules_stay_small():
    sizes = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
