"""The tree's shape as rules a change cannot quietly break: one import package, no import cycle (imports inside
functions counted too, since a lazy import only hides a cycle), no module reaching into another module's private
names, lower layers never importing higher ones, and a docstring that says what each sub-package holds."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gemma_oracle"
# The data path, lowest first: a component may import only those listed before it (and itself).
LAYERS = ("kernels", "engine", "oracles", "reports", "harness")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import of a module, wherever it stands."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from package import module` imports the module; `from module import name` takes a name
                found.append((sub, None, node.lineno) if sub in MODULES else (base, alias.name, node.lineno))
    return [(mod, taken, line) for mod, taken, line in found if mod.split(".")[0] == "gemma_oracle"]


GRAPH = {name: sorted({mod for mod, _, _ in _imports(name) if mod in MODULES} - {name}) for name in MODULES}


def test_everything_lives_in_one_import_package():
    tops = {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "tests"}
    assert tops == {"gemma_oracle"}
    assert {n.split(".")[1] for n in MODULES if n.count(".") >= 1} >= set(LAYERS)


def test_no_import_cycle():
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def test_no_module_imports_another_modules_private_names():
    offences = []
    for name in MODULES:
        own_package = name if _is_package(name) else name.rpartition(".")[0]
        for mod, taken, line in _imports(name):
            if taken is not None and _private(taken) and mod != name:
                offences.append(f"{name}:{line} takes {mod}.{taken}")
            parts = mod.split(".")
            for depth, part in enumerate(parts):
                # a private module (kernels._compile) is for the modules of its own package
                if _private(part) and not own_package.startswith(".".join(parts[:depth])):
                    offences.append(f"{name}:{line} imports the private module {mod}")
    assert offences == []


def test_lower_layers_never_import_higher_ones():
    offences = []
    for name, deps in GRAPH.items():
        layer = name.split(".")[1] if name.count(".") >= 1 else None
        if layer not in LAYERS:
            continue
        allowed = set(LAYERS[: LAYERS.index(layer) + 1])
        offences += [f"{name} -> {dep}" for dep in deps if dep.count(".") >= 1 and dep.split(".")[1] not in allowed]
    assert offences == []


@pytest.mark.parametrize("package", sorted(n for n in MODULES if _is_package(n)))
def test_every_package_says_what_it_holds(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and len(doc.split()) >= 12, f"{package}: its __init__ docstring should say what lives there"
