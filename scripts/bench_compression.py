"""What handing samples to `regress.generate`'s compression processes costs the main process, per sample.

The main process renders, writes and hashes on threads that share one interpreter lock; every sample it
sends to a compression process is pickled through a pipe, and its compressed members come back the same way. This
times the real pool (`compression_pool`, `record_members`) on EG3D-sized samples (`skimage.data.astronaut()` as
the 512² image, so PNG sizes are those of a photo), then the two directions alone:

    python scripts/bench_compression.py --workers 2 --png-level 1 [--plain]

Prints main-process CPU ms and wall ms per sample for: the full compression, the sample sent with a
tiny reply, and a tiny request with a reply the size of the compressed members; then the wall ms again
beside a busy Python thread, as the render and write threads are. `--plain` measures without what
`regress.generate` does against lock contention (64 KB pipes, the default switch interval). Then why
threads are no way out: PNG compressions a second on one thread, alone and beside a busy Python thread (PIL
takes the lock between chunks).
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from typing import Any, Iterator

import numpy as np
from skimage.data import astronaut

from regress.generation.background import short_switch_interval
from regress.generation.compress import PIPE_BYTES, compression_pool, record_members
from regress.generation.timing import timed_call
from regress.sample import encode_image


def ignore(*args: Any) -> dict[str, bytes]:
    """Receive a sample and reply with almost nothing."""
    return {"ok": b"1"}


def reply(size: int) -> dict[str, bytes]:
    """Reply with `size` bytes, as a compression would."""
    return {"image.png": bytes(size)}


def eg3d_batch(size: int) -> dict[str, np.ndarray]:
    """Arrays of a generate batch at EG3D's sizes: 512² uint8 image, 128² depth and mask, 14 x 512 w, z, cameras."""
    rng = np.random.default_rng(0)
    image = np.ascontiguousarray(astronaut().transpose(2, 0, 1))
    return {
        "image": np.repeat(image[None], size, 0),
        "depth": rng.random((size, 1, 128, 128), dtype=np.float32),
        "mask": rng.random((size, 1, 128, 128), dtype=np.float32),
        "w": rng.standard_normal((size, 14, 512), dtype=np.float32),
        "z": rng.standard_normal((size, 512), dtype=np.float32),
        "camera": rng.random((size, 25), dtype=np.float32),
        "camera_cond": rng.random((size, 25), dtype=np.float32),
    }


@contextlib.contextmanager
def busy_python_thread(busy: bool) -> Iterator[None]:
    """A thread running a Python loop for the length of the block (none when not `busy`)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin)
    if busy:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if busy:
            thread.join()


def seconds_per_sample(pool: Any, samples: list, job: Any, busy: bool) -> tuple[float, float]:
    """Main-process CPU and wall seconds per sample of `job` over all samples, with or without a busy thread."""
    with busy_python_thread(busy):
        cpu, wall = time.process_time(), time.perf_counter()
        for future in [pool.submit(*job(sample)) for sample in samples]:
            future.result()
        return (time.process_time() - cpu) / len(samples), (time.perf_counter() - wall) / len(samples)


def thread_compressions_per_second(image: np.ndarray, png_level: int, beside_python: bool, seconds: float = 2.0) -> float:
    """PNG compressions a second on this thread, alone or beside a thread running a Python loop."""
    count, end = 0, time.perf_counter() + seconds
    with busy_python_thread(beside_python):
        while time.perf_counter() < end:
            encode_image(image, "png", png_level)
            count += 1
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--png-level", type=int, default=1)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--plain", action="store_true", help="64 KB pipes and Python's default switch interval, as before")
    args = parser.parse_args()
    batch, meta = eg3d_batch(32), {"seed": 0, "generator": "eg3d"}
    pool = compression_pool(args.workers, pipe_bytes=1 << 16 if args.plain else PIPE_BYTES)
    for future in [pool.submit(int) for _ in range(2 * args.workers)]:
        future.result()  # every process started and imported
    samples = [{k: v[i % 32] for k, v in batch.items()} for i in range(args.samples)]
    members = record_members(samples[0], meta, "png", args.png_level)
    reply_size = sum(len(v) for v in members.values())
    jobs = {
        f"compress (png level {args.png_level})": lambda s: (timed_call, record_members, s, meta, "png", args.png_level),
        "send the sample, tiny reply": lambda s: (ignore, s),
        f"tiny request, {reply_size / 1e3:.0f} KB reply": lambda s: (reply, reply_size),
    }
    setting = "64 KB pipes, default switch interval" if args.plain else "as regress.generate runs (1 MiB pipes, 0.5 ms switch interval)"
    print(f"{args.workers} compression processes, {args.samples} samples, {sum(v[0].nbytes for v in batch.values()) / 1e3:.0f} KB a sample; {setting}\n")
    print("| job | main-process CPU ms/sample | wall ms/sample | wall ms/sample beside a busy Python thread |\n| --- | ---: | ---: | ---: |")
    with contextlib.nullcontext() if args.plain else short_switch_interval():
        for name, job in jobs.items():
            (cpu, wall), (_, busy_wall) = (seconds_per_sample(pool, samples, job, busy) for busy in (False, True))
            print(f"| {name} | {1e3 * cpu:.3f} | {1e3 * wall:.2f} | {1e3 * busy_wall:.2f} |", flush=True)
    pool.shutdown()
    image = np.ascontiguousarray(batch["image"][0].transpose(1, 2, 0))
    alone, beside = (thread_compressions_per_second(image, args.png_level, busy) for busy in (False, True))
    print(f"\nPNG compressions/s on a thread: {alone:.1f} alone, {beside:.1f} beside a busy Python thread")


if __name__ == "__main__":
    main()
