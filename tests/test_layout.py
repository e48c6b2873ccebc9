"""The package's architecture: one home per concept, layers that only import downwards, no import circle.

Every ``from`` import inside ``medsynth`` is read from the source (module level and inside functions, where
heavy libraries are imported late), so a circle hidden in a function still fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medsynth"

#: Lowest first. A module imports only from its own layer or below; docs/architecture.md draws this.
LAYERS = [
    ["medsynth", "errors", "hub", "atomic", "domains", "recipes", "hardware", "metrics", "fidelity", "memorization",
     "training.schedule", "training", "cards", "synthetic"],
    ["scans", "io", "transforms"],
    ["data", "classify", "resolution", "diffusion", "upsampler", "synthetic.provenance", "synthetic.marking", "cards.render"],
    ["features", "explain", "training.loop", "synthetic.generate", "synthetic.upsample", "synthetic.merge", "synthetic.curate"],
    ["ood", "quality", "audit", "evaluate", "explain_check", "training.classifier", "training.diffusion", "training.upsampler"],
    ["synthetic.match", "tstr", "cards.rebuild", "reports", "service", "jobs", "space"],
    ["cli.common", "cli.train", "cli.models", "cli.sets", "cli.study", "cli.hub", "cli", "__main__"],
    ["ui", "ui.common", "ui.generate_tab", "ui.classify_tab", "ui.experiment_tab", "ui.train_tab", "ui.about_tab"],
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join(parts) or "medsynth"] = path
    return found


def _imports(name: str, path: Path, modules) -> list[tuple[str, str, int]]:
    """(imported module, imported name, line) for every package-internal ``from`` import of one module."""
    package = name.split(".") if path.name == "__init__.py" and name != "medsynth" else name.split(".")[:-1]
    if name == "medsynth":
        package = []
    edges = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else [])) or "medsynth"
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target != "medsynth" else alias.name
                edges.append((sub if sub in modules else target, alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medsynth"):
            raise AssertionError(f"{path}:{node.lineno} imports its own package absolutely; use a relative import")
    return edges


def test_every_module_has_a_layer():
    placed = {m for layer in LAYERS for m in layer}
    assert set(_modules()) == placed, "place new modules in LAYERS (and docs/architecture.md)"


def test_layers_only_import_downwards_and_there_is_no_circle():
    modules = _modules()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    graph = {m: set() for m in modules}
    upward = []
    for name, path in modules.items():
        for target, _, line in _imports(name, path, modules):
            if target == name:
                continue
            graph[name].add(target)
            if level[target] > level[name]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({name}, layer {level[name]}) imports "
                              f"{target} (layer {level[target]})")
    assert not upward, "\n".join(upward)
    # no circle, even within a layer: depth-first search for a back edge
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    crossing = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported} from {target}"
                for name, path in modules.items() for target, imported, line in _imports(name, path, modules)
                if imported.startswith("_") and not imported.startswith("__") and target != name]
    assert not crossing, "\n".join(crossing)


#: Test files that follow a concern across the package rather than one module.
CROSS_CUTTING = {"app": "app.py and its API", "bad_input": "every entry point against one corpus of odd files",
                 "faults": "damaged checkpoints, killed runs, unwritable outputs", "security": "nothing unsafe gets in",
                 "shipped": "the checkpoints under checkpoints/", "layout": "this file"}


def test_test_files_mirror_the_package():
    """tests/test_<module>.py for a module, tests/test_<subpackage>[_<module>].py inside a subpackage."""
    names = {m.replace(".", "_") for m in _modules()} | {m.split(".")[0] for m in _modules()}
    tests = {p.stem[len("test_"):] for p in Path(__file__).parent.glob("test_*.py")}
    stray = sorted(t for t in tests if t not in names and t not in CROSS_CUTTING)
    assert not stray, f"test files that name no module or subpackage: {stray}"
