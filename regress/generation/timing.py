"""Where a long run's wall time went: seconds per named stage, summed over calls."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any, Callable, Iterator


class StageClock:
    """Wall seconds per stage name, summed over every `with clock("stage"):` (each name used by one thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds


def timed_call(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """`function(*args)` and the seconds it took: for work done in another process."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start
