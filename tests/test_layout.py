"""Imports run one way: every module of regress/ sits in one layer and imports only the layers below its own, and no
chain of imports comes back to where it started, between packages or inside one (docs/architecture.md draws it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "regress"
# Lowest first. A module may import its own package and the layers below its layer, never another name of its layer
# nor a layer above. Every module and package directly under regress/ is named here once; a name that does not exist
# is allowed.
LAYERS = [
    {"errors"},
    {"configs"},
    {"camera", "sample"},
    {"store"},
    {"runtime"},
    {"generators"},
    {"geometry", "faces", "gallery"},
    {"generation", "inversion", "datamodules", "models"},  # four pipelines that meet only on disk and in faces/
    {"training", "evaluation"},
    {"prediction"},  # photos -> 3D faces: the regressors as evaluation loads them
    {"fit", "generate", "evaluate", "predict", "render", "export"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def modules_of(root: Path) -> dict[str, Path]:
    """Every module of the package at `root` by dotted name: `regress.models.base`, `regress.models` (its __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its file: at the top, inside functions, under
    TYPE_CHECKING, relatively. `from regress.models import metrics` is `regress.models.metrics`,
    `from regress.models import LatentRegressor` is `regress.models` (the package's __init__)."""
    root = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            full = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{full}.{alias.name}" if f"{full}.{alias.name}" in modules else full for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules and target.split(".")[0] == root:
                target = target.rpartition(".")[0]  # `import regress.models.base.X`: the nearest module that exists
            if target in modules and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = modules_of(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (`a -> b -> a`) for each import that leads back into the chain that reached it: a depth-first walk."""
    circles, done, chain = [], set(), []

    def visit(name: str) -> None:
        chain.append(name)
        for target in sorted(graph[name]):
            if target in chain:
                circles.append(chain[chain.index(target) :] + [target])
            elif target not in done:
                visit(target)
        chain.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)
    return circles


def top_level(name: str) -> str | None:
    """`regress.models.base` -> `models`; the root package itself has none."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_exactly_one_layer():
    listed = [name for names in LAYERS for name in names]
    assert len(listed) == len(set(listed)), f"named in two layers: {sorted({n for n in listed if listed.count(n) > 1})}"
    present = {top_level(name) for name in modules_of(PACKAGE)} - {None}
    unplaced = sorted(present - set(listed))
    assert not unplaced, f"{', '.join(f'regress/{n}' for n in unplaced)} in no layer: add to LAYERS here and to docs/architecture.md"


def test_no_module_imports_its_own_layer_or_one_above():
    wrong = []
    for name, targets in sorted(import_graph(PACKAGE).items()):
        source = top_level(name)
        for target in sorted(targets):
            other = top_level(target)
            if source and other and other != source and LAYER_OF[other] >= LAYER_OF[source]:
                relation = "its own layer" if LAYER_OF[other] == LAYER_OF[source] else "a layer above"
                wrong.append(f"{name} imports {target} ({other}: {relation})")
    assert not wrong, "imports that do not run down:\n" + "\n".join(wrong)


def test_no_import_circle_between_modules():
    circles = import_circles(import_graph(PACKAGE))
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in circles)


def test_the_walk_sees_lazy_type_checking_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (package / "b.py").write_text("def make():\n    from . import a\n")
    (package / "c.py").write_text("import pkg.b\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert {"regress.datamodules", "regress.evaluation", "regress.models"} <= {
        ".".join(name.split(".")[:2]) for name in import_graph(PACKAGE)["regress.evaluate"]
    }  # the commands import their layers inside functions
