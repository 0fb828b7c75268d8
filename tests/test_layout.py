"""The layout (docs/architecture.md), read from the code: packages import downwards only, and no module cycle."""

import ast
import os

import keras_dla

PACKAGE = os.path.dirname(keras_dla.__file__)
SHARED = {"checks", "files", "resampling", "version"}
# What each part of keras_dla may import (besides itself and the shared modules).
ALLOWED = {
    "cli": {"demo", "export", "training", "models", "weights"},
    "demo": {"export", "training", "models", "weights"},
    "export": {"models", "weights"},
    "training": {"models", "weights"},
    "models": {"weights"},
    "weights": set(),
    **{name: set() for name in SHARED},
}


def modules():
    """{dotted module name: path} of every module of keras_dla."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))[: -len(".py")]
                dotted = relative.replace(os.sep, ".").removesuffix(".__init__")
                found[dotted] = os.path.join(folder, name)
    return found


def imports_of(path, known):
    """The keras_dla modules `path` imports, anywhere in the file (functions included)."""
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module (its package is imported by any import of it);
            # `from module import name`, the module.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if name in known] or [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("keras_dla."):
                targets.add(name)
    return targets


def part(module):
    return module.split(".")[1] if "." in module else module


def test_packages_import_downwards_only():
    known = modules()
    assert len(known) > 40 and "keras_dla.models.dla" in known
    wrong = []
    for module, path in known.items():
        if module == "keras_dla":
            continue
        for target in imports_of(path, known):
            source, destination = part(module), part(target)
            if destination not in (source, *SHARED) and destination not in ALLOWED[source]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_cycle():
    known = modules()
    graph = {module: imports_of(path, known) - {module, "keras_dla"} for module, path in known.items()}
    # Depth-first search; a module met again on the current path closes a cycle.
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
