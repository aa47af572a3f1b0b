"""Compressing rendered samples into shard members (PNG/JPEG/WebP images, in worker processes) and writing shards, a few at once."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from regress.generation.render import RenderedBatch
from regress.generation.timing import StageClock, timed_call
from regress.sample import encode_sample
from regress.store.files import write_failed
from regress.store.shard_set import ShardSet
from regress.store.shards import ShardWriter, sample_key


def record_members(arrays: dict[str, np.ndarray], meta: dict, image_format: str, png_level: int) -> dict[str, bytes]:
    """One sample's shard members, its images compressed (`regress.sample.encode_sample`): the work of the compression processes."""
    return encode_sample({**{k: torch.from_numpy(v)[None] for k, v in arrays.items()}, "meta": [meta]}, 0, image_format, png_level)


def members_with_mesh(members: dict[str, bytes], mesh: tuple[str, bytes | memoryview] | None) -> dict[str, bytes | memoryview]:
    """A sample's shard members: its compressed members, its mesh file (member name, bytes) when it has one, `meta.json` last."""
    members = dict(members)
    meta_json = members.pop("meta.json")
    return {**members, **(dict([mesh]) if mesh is not None else {}), "meta.json": meta_json}


PIPE_BYTES = 1 << 20  # a sample (about 0.9 MB at EG3D's sizes) or its compressed members in one piece; Linux's limit without privileges


def compression_pool(workers: int, pipe_bytes: int = PIPE_BYTES) -> Executor | None:
    """`workers` processes for image compression, starting now (they import torch while the first batch
    compiles); None for 0: compress in this process."""
    if not workers:
        return None
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=exit_with_parent, initargs=(os.getpid(),))
    _resize_pipes(pool, pipe_bytes)
    for _ in range(workers):  # each submission starts a process
        pool.submit(int)
    return pool


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """In a worker: end this process once `parent` is gone. A parent killed outright (kill -9, the OOM killer)
    never tells its workers, and they hold their own request pipe open, so they would wait forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _resize_pipes(pool: ProcessPoolExecutor, size: int) -> None:
    """Give the pool's request and reply pipes room for `size` bytes (Linux; elsewhere they stay as they are).

    Through a 64 KB pipe a sample moves in 14 pieces, and the thread moving it gives up the interpreter
    lock for each; beside a busy thread, getting it back can take the whole switch interval every time.
    """
    resize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if resize is None:
        return
    try:
        for end in pool_pipes(pool):
            fcntl.fcntl(end.fileno(), resize, size)
    except (AttributeError, OSError):  # another Python's internals, or fs.pipe-max-size below `size`
        return


def pool_pipes(pool: ProcessPoolExecutor) -> tuple[Any, Any]:
    """The pool's request pipe (write end) and reply pipe (read end): CPython's ProcessPoolExecutor internals."""
    return pool._call_queue._writer, pool._result_queue._reader


def _done(function: Callable[..., Any], *args: Any) -> Future:
    """A finished future: the in-process stand-in for a worker pool."""
    future: Future = Future()
    future.set_result(function(*args))
    return future


SHARDS_IN_FLIGHT = 2  # shards written at once: a shard's SHA-256 is one stream, so two shards hash side by side (four: no faster, docs/benchmarks.md)


class ShardInFlight:
    """One shard written on a thread of its own from the samples handed to it in order (`add`), so that the tar
    writing and hashing of several shards overlap each other and the compression of the next; `record` waits for it.
    Its thread keeps its own stage clock (`write: tar + hash (summed)`), added to the caller's when it ends."""

    def __init__(self, path: Path, record: dict[str, Any], threads: ThreadPoolExecutor, depth: int) -> None:
        self.path, self.items, self.clock = path, queue.Queue(maxsize=depth), StageClock()
        self.future = threads.submit(self._write, record)

    def _write(self, record: dict[str, Any]) -> dict[str, Any]:
        try:
            with ShardWriter(self.path) as writer:
                while (item := self.items.get()) is not _END:
                    if item is _ABORT:
                        raise _Aborted
                    with self.clock("write: tar + hash (summed)"):
                        writer.add(*item)
                return writer.commit(record)
        except OSError as error:
            raise write_failed(self.path, error) from error

    def add(self, key: str, members: dict[str, bytes | memoryview]) -> None:
        """Queue one sample for the shard's thread; its error, if it stopped."""
        self._put((key, members))

    def _put(self, item: Any) -> None:
        while True:
            if self.future.done():
                self.future.result()  # raises the thread's error
                raise RuntimeError(f"the writer of {self.path.name} stopped before its last sample")
            with contextlib.suppress(queue.Full):
                return self.items.put(item, timeout=0.1)

    def close(self) -> None:
        """No more samples: the thread finishes the tar and writes its record."""
        self._put(_END)

    def abort(self) -> None:
        """Stop the thread without finishing: its partial file is removed. Quiet, as it runs while another error is raised."""
        with contextlib.suppress(Exception):
            self._put(_ABORT)
        with contextlib.suppress(BaseException):
            self.future.result()

    def record(self, clock: StageClock) -> dict[str, Any]:
        """The finished shard's record, once its thread is done; its stage times added to `clock`."""
        record = self.future.result()
        for stage, seconds in self.clock.seconds.items():
            clock.add(stage, seconds)
        return record


_END, _ABORT = object(), object()


class _Aborted(Exception):
    """The shard's writer was told to stop (an error elsewhere): its partial file goes."""


class ShardCompression:
    """One shard's samples compressed from its rendered batches (`add`, in seed order; other shards' batches may come
    between them), at most `max_pending` in the compression processes at once, and handed in order to the shard's
    writer thread; `close` once `complete` gives the shard in flight. On a write error or a dead compression process
    its partial file is removed and the error says why."""

    def __init__(
        self, shards: ShardSet, index: int, image_format: str, png_level: int, max_pending: int, pool: Executor | None,
        threads: ThreadPoolExecutor, bar: tqdm, clock: StageClock,
    ) -> None:  # fmt: skip
        self.seeds, self.path = shards.layout.seeds(index), shards.path(index)
        self.image_format, self.png_level, self.max_pending = image_format, png_level, max_pending
        self.pool, self.bar, self.clock, self.done = pool, bar, clock, 0
        self.pending: deque[tuple[str, Future, tuple[str, bytes | memoryview] | None]] = deque()
        self.shard = ShardInFlight(self.path, {"index": index, "seed_start": self.seeds.start, "fingerprint": shards.fingerprint}, threads, max_pending)

    @property
    def complete(self) -> bool:
        """Whether every batch of the shard has been added."""
        return self.done == len(self.seeds)

    def add(self, batch: RenderedBatch) -> None:
        """Submit the batch's samples for compression; hand over those finished, in order."""
        assert batch.seeds.start == self.seeds.start + self.done, "batches out of order"
        self.done += len(batch.seeds)
        with self._failing_safely():
            with self.clock("write: submit"):
                for i, seed in enumerate(batch.seeds):
                    sample = {k: v[i] for k, v in batch.arrays.items()}
                    job = (timed_call, record_members, sample, batch.meta[i], self.image_format, self.png_level)
                    mesh = (batch.mesh_member, batch.meshes[i]) if batch.meshes[i] is not None else None
                    self.pending.append((sample_key(seed), self.pool.submit(*job) if self.pool else _done(*job), mesh))
            while len(self.pending) > self.max_pending or (self.pending and self.pending[0][1].done()):
                self._hand_over_first()

    def close(self) -> ShardInFlight:
        """Hand over the rest; the shard in flight, its thread finishing the tar."""
        with self._failing_safely():
            while self.pending:
                self._hand_over_first()
            self.shard.close()
        return self.shard

    def abort(self) -> None:
        """Stop the shard's thread without finishing: its partial file is removed."""
        self.shard.abort()

    def _hand_over_first(self) -> None:
        key, future, mesh = self.pending.popleft()
        with self.clock("write: waiting for workers"):
            members, seconds = future.result()
        self.clock.add("workers: compress (summed)", seconds)
        with self.clock("write: waiting for shard writers"):
            self.shard.add(key, members_with_mesh(members, mesh))
        self.bar.update(1)

    @contextlib.contextmanager
    def _failing_safely(self) -> Iterator[None]:
        """On any error the shard's partial file goes; a dead compression process is said plainly."""
        try:
            yield
        except BrokenProcessPool as error:
            self.abort()
            raise ChildProcessError(
                f"an image-compression process stopped while {self.path.name} was written: killed (out of memory?), or started by a "
                "script that calls regress.generate without `if __name__ == \"__main__\":` (the compression processes import that script); "
                "complete shards are kept: fix the cause and rerun the same command, or pass --workers 0 to compress in this process"
            ) from error
        except BaseException:
            self.abort()
            raise
