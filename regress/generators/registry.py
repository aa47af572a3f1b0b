"""The registry of generator backends: `@register(name)` on a backend class; `GeneratorSpec` (spec.py) builds one."""

from __future__ import annotations

import importlib
from typing import Callable

from regress.generators.base import Generator

_REGISTRY: dict[str, type[Generator]] = {}
_BACKEND_MODULES = ("regress.generators.analytic", "regress.generators.eg3d")


def register(name: str) -> Callable[[type[Generator]], type[Generator]]:
    """Class decorator: make a backend creatable by `name`."""

    def decorate(cls: type[Generator]) -> type[Generator]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_generators() -> list[str]:
    """The backend names, every shipped backend imported."""
    for module in _BACKEND_MODULES:
        importlib.import_module(module)
    return sorted(_REGISTRY)


def backend(name: str) -> type[Generator]:
    """The backend class registered under `name`; a ValueError lists the known names."""
    known = available_generators()
    if name not in _REGISTRY:
        raise ValueError(f"unknown generator {name!r}; known generators: {', '.join(known)}")
    return _REGISTRY[name]
