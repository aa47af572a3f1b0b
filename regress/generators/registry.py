"""The registry of generator backends: `@register(name)` on a backend class, `create_generator(name)` builds one."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
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
    for module in _BACKEND_MODULES:
        importlib.import_module(module)
    return sorted(_REGISTRY)


def create_generator(name: str | None = None, checkpoint: str | Path | None = None, **kwargs) -> Generator:
    """A generator by backend name; with no name, `eg3d` when a checkpoint is given, else `analytic`.

    Backends with weights load them from `checkpoint` (a path, never a download).
    """
    known = available_generators()
    if name is None:
        name = "eg3d" if checkpoint is not None else "analytic"
        if name == "analytic":
            print("regress: no EG3D checkpoint given, using the embedded analytic head generator", file=sys.stderr)
    if name not in _REGISTRY:
        raise ValueError(f"unknown generator {name!r}; known generators: {', '.join(known)}")
    cls = _REGISTRY[name]
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise FileNotFoundError(f"generator checkpoint {checkpoint} does not exist; give the path of a local checkpoint "
                                    "(EG3D: the upstream .pkl, or the folder python -m regress.generators.eg3d.convert makes)")  # fmt: skip
        return cls.from_checkpoint(checkpoint, **kwargs)
    options = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(options))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in options.values()):
        raise ValueError(f"unknown {name} generator option(s) {', '.join(unknown)}; its options: {', '.join(options)}")
    if name != "analytic":  # the embedded default is a model in its own right; any other without weights is noise
        print(f"regress: no checkpoint given for {name}: random weights, whose images are noise (for tests and timing only)", file=sys.stderr)
    return cls(**kwargs)

