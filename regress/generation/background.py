"""A consumer on a background thread fed by a producer on the calling thread, through a bounded queue."""

from __future__ import annotations

import contextlib
import itertools
import queue
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

from regress.generation.timing import StageClock

Item, Result = TypeVar("Item"), TypeVar("Result")
_END = object()
SWITCH_INTERVAL_S = 0.0005  # Python's default is 0.005


@contextlib.contextmanager
def short_switch_interval(seconds: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Hand the interpreter lock between threads every `seconds` inside the block, then restore the interval.

    A thread back from a pipe, disk or device call waits for the lock until the busy thread yields it: by
    default up to 5 ms each time, which a thread moving a sample through a pipe in pieces pays per piece.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def consume_in_background(
    consume: Callable[[Iterator[Item]], Result],
    items: Iterable[Item],
    depth: int = 2,
    clock: StageClock | None = None,
    consumer_wait: str = "consumer: waiting for items",
    producer_wait: str = "producer: waiting for the consumer",
) -> Result:
    """`consume(iterator over items)` in a background thread while this thread produces `items`, up to
    `depth` ahead; returns its result. Errors of either side are raised here, after both have stopped.
    The clock, if given, counts the time either side waits for the other under the two stage names.

    The producer stays on the calling thread: CUDA graphs (torch.compile's reduce-overhead) live there.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    clock = clock or StageClock()

    def drain() -> Iterator[Item]:
        while True:
            try:
                with clock(consumer_wait):
                    item = ready.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    raise RuntimeError("the producer stopped early") from None
                continue
            if item is _END:
                return
            yield item

    def run() -> None:
        try:
            outcome["result"] = consume(drain())
        except BaseException as error:  # raised on the calling thread
            outcome["error"] = error
        finally:
            stop.set()

    thread = threading.Thread(target=run, name="regress-consumer", daemon=True)
    thread.start()
    try:
        for item in itertools.chain(items, [_END]):
            while not stop.is_set():
                try:
                    with clock(producer_wait):
                        ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                break
    finally:
        stop.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
