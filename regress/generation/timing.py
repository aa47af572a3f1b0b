"""Where a long run's wall time went: seconds per named stage, summed over calls; on a GPU also the device's own time."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict, deque
from typing import Any, Callable, Iterator

import torch


class StageClock:
    """Wall seconds per stage name, summed over every `with clock("stage"):` (each name used by one thread).

    The host's clock books work queued on a GPU to whichever stage waits for it (the render thread runs a batch ahead),
    so `on_device` also times a stage's queued work between two CUDA events, read once they have completed (never
    waited for): `device: NAME` is the stream's time from the stage's first queued work to its last.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._events: deque[tuple[str, torch.cuda.Event, torch.cuda.Event]] = deque()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    @contextlib.contextmanager
    def on_device(self, stage: str, device: torch.device) -> Iterator[None]:
        """Time the work this block queues on `device` as `device: stage` (nothing on a CPU)."""
        if device.type != "cuda":
            yield
            return
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((f"device: {stage}", start, end))
            self.collect_device()

    def collect_device(self, wait: bool = False) -> None:
        """Add the device times of the stages whose work has completed (with `wait`: of all, waiting for them)."""
        while self._events and (wait or self._events[0][2].query()):
            stage, start, end = self._events.popleft()
            end.synchronize()
            self.seconds[stage] += start.elapsed_time(end) / 1000

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds


def timed_call(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """`function(*args)` and the seconds it took: for work done in another process."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start
