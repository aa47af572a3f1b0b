"""Generator options checked by type and range in one place, before a generator is built: a bad value is one line
naming the option, never a TypeError or an out-of-memory error deep in the renderer, nor a data set of empty masks."""

from __future__ import annotations

import math
import types
import typing
from typing import Any


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` (as JSON or YAML gives it) is of the type `annotation`: an int is a whole number and never a
    bool, a float a finite number, a tuple a list or tuple of its items' types; types not listed here pass."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in arguments)
    if origin is typing.Literal:
        return value in arguments
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(arguments) and all(map(_fits, value, arguments))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation in (str, type(None)):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    names = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string", type(None): "null"}
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return " or ".join(names.get(arm, str(arm).replace("typing.", "")) for arm in arms)


def check_options(backend: str, options: dict[str, Any], types_: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> None:
    """A ValueError of one line naming the first option whose value is not of its type (`types_`: name -> annotation)
    or outside its inclusive range (`bounds`: name -> (lowest, highest)); None values pass where the type allows them."""
    for name, value in options.items():
        annotation = types_.get(name, Any)
        if not _fits(value, annotation):
            raise ValueError(f"the {backend} generator option {name} must be {_type_name(annotation)}, got {value!r}")
        if name in bounds and value is not None:
            lowest, highest = bounds[name]
            if not lowest <= value <= highest:
                raise ValueError(f"the {backend} generator option {name} must be from {lowest} to {highest}, got {value!r}")
