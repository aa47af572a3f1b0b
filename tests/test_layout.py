"""Imports run one way: commands -> evaluation -> data modules and models -> generation and inversion -> geometry
-> generators -> runtime -> store -> the rest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "regress"
# Lowest first; a layer may import the layers below it and modules listed in none (camera, sample, configs, ...).
LAYERS = [
    {"store"}, {"runtime"}, {"generators"}, {"geometry"}, {"generation", "inversion"}, {"datamodules", "models"}, {"evaluation"},
    {"fit", "generate", "evaluate"},
]


def regress_imports(path: Path) -> set[str]:
    """The top-level regress modules a file imports, lazily or not: `regress.models.base` -> `models`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "regress":
            parts = node.module.split(".")
            names |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("regress.")}
    return names


def files_of(name: str) -> list[Path]:
    folder = PACKAGE / name
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]


@pytest.mark.parametrize("level", range(len(LAYERS)), ids=lambda k: "+".join(sorted(LAYERS[k])))
def test_no_module_imports_its_own_layer_or_one_above(level):
    above = set().union(*LAYERS[level + 1 :])
    for name in LAYERS[level]:
        forbidden = above | (LAYERS[level] - {name})
        for path in files_of(name):
            wrong = regress_imports(path) & forbidden
            assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports {sorted(wrong)}, which sit at or above its layer"


def test_the_layer_check_sees_lazy_imports():
    assert {"datamodules", "evaluation", "models"} <= regress_imports(PACKAGE / "evaluate.py")
