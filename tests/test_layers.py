"""The package's layers only point down, and no import cycle exists (read with the standard ``ast``).

Every ``import`` counts, at module level or inside a function (a deferred import is still a
dependency); only imports under ``if TYPE_CHECKING:`` are left out, since they never run.

Layers, lowest first (a module may import its own layer and the layers below it)::

    foundation   errors, seeding, runtime, distributed, checkpoint, _native (+ the compiled _core), config
    ops          ops (fused ops + references), data (replay store), envs (vector envs)
    models       models
    rl           rl, agent
    train        train
    cli          cli
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import deltairis

PACKAGE_DIR = Path(deltairis.__file__).resolve().parent
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors", "seeding", "runtime", "distributed", "checkpoint", "_native", "_core", "config")),
    ("ops", ("ops", "data", "envs")),
    ("models", ("models",)),
    ("rl", ("rl", "agent")),
    ("train", ("train",)),
    ("cli", ("cli",)),
)
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}
#: packages of one layer that must not import each other
PEERS_APART = (("ops", "data", "envs"),)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "kernels" in parts:  # Triton kernels: imported only through deltairis.ops
            continue
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules that ``module`` imports (resolving relative imports and submodules)."""
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in known:  # deltairis.x.y.Name -> deltairis.x.y
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("deltairis"):
                        target = resolve(alias.name)
                        if target:
                            found.add(target)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("deltairis"):
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        target = sub if sub in known else resolve(base)
                        if target:
                            found.add(target)
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods) | {"deltairis._core"}  # the compiled extension: a leaf
    return {
        name: _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", known)
        for name, path in mods.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package facade deltairis/__init__.py


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for src, targets in graph.items():
        for dst in targets:
            a, b = _part(src), _part(dst)
            if a is not None and b is not None and a != b:
                out[a].add(b)
    return out


def test_the_graph_is_read() -> None:
    graph = _graph()
    # a few edges that must be seen, so that a broken reader cannot pass the tests below
    assert "deltairis.models.kv_cache" in graph["deltairis.models.transformer"]
    assert "deltairis.rl.imagination" in graph["deltairis.rl.losses"]
    assert "deltairis.train.components" in graph["deltairis.train.trainer"]
    assert "deltairis.errors" in graph["deltairis.runtime"]
    assert all(part in RANK for part in {_part(m) for m in graph} - {None}), "a module outside every layer"


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_cycle_between_packages() -> None:
    cycles = _cycles(_package_graph(_graph()))
    assert not cycles, f"package-level import cycles: {cycles}"


def test_layers_only_point_down() -> None:
    wrong = []
    for src, targets in _graph().items():
        a = _part(src)
        if a is None:
            continue  # the facade re-exports from the top (lazily)
        for dst in targets:
            b = _part(dst)
            if b is None:
                wrong.append(f"{src} -> {dst} (the package facade)")
            elif RANK[b] > RANK[a]:
                wrong.append(f"{src} ({LAYERS[RANK[a]][0]}) -> {dst} ({LAYERS[RANK[b]][0]})")
            elif RANK[b] == RANK[a] and a != b and any(a in g and b in g for g in PEERS_APART):
                wrong.append(f"{src} -> {dst} (peers of one layer)")
    assert not wrong, "imports that point up:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("low, high", [("models", "rl"), ("ops", "models"), ("rl", "train"), ("train", "cli")])
def test_layer_order_is_the_documented_one(low: str, high: str) -> None:
    assert RANK[low] < RANK[high]
