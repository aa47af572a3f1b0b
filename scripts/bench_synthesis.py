"""Samples per second of a registered generator's `sample()`, for batch sizes and image resolutions.

    python scripts/bench_synthesis.py --generator analytic
    python scripts/bench_synthesis.py --generator eg3d --checkpoint data/ffhq512-128.pkl --device cuda --batch-sizes 4 16

Prints one table row per (resolution, batch size): machine, torch version, device, threads,
generator, image and depth resolution, batch size, samples/s (wall time, after a warm-up batch) and
samples per CPU-second of this process (on a shared machine the wall figure drops, this one less).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from regress.camera import ViewMixture
from regress.generators import available_generators, create_generator


def machine() -> str:
    """CPU model and core count, plus the GPU name when one is used."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} x{torch.multiprocessing.cpu_count()}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(
    generator, batch_size: int, views: ViewMixture, min_seconds: float, device: torch.device
) -> tuple[float, float]:
    """Samples per wall second and per CPU second of this process, over at least `min_seconds`, fresh seeds."""
    next_seed = 0

    def batch() -> None:
        nonlocal next_seed
        generator.sample(range(next_seed, next_seed + batch_size), views)
        next_seed += batch_size

    with torch.no_grad():
        batch()  # warm-up
        synchronize(device)
        start, cpu_start, done = time.perf_counter(), time.process_time(), 0
        while True:
            batch()
            done += batch_size
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return done / elapsed, done / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="analytic", choices=available_generators())
    parser.add_argument("--checkpoint", default=None, help="weights file for backends that need one (eg3d)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--resolutions", type=int, nargs="+", default=None,
        help="image resolutions to build the generator with (default: 128 and 512 for analytic, the checkpoint's own otherwise)",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--views", default="published", help="view mixture: a name under configs/views or a YAML path")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each row for at least this long")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        parser.error(f"checkpoint {args.checkpoint} does not exist")
    resolutions = args.resolutions or ([128, 512] if args.generator == "analytic" else [None])
    device = torch.device(args.device)
    views = ViewMixture.load(args.views)
    header = ("machine", "torch", "device", "threads", "generator", "image", "depth", "batch", "samples/s", "samples/cpu-s")
    rows = []
    print(" | ".join(header), flush=True)
    for resolution in resolutions:
        kwargs = {} if resolution is None else {"image_resolution": resolution}
        generator = create_generator(args.generator, checkpoint=args.checkpoint, **kwargs).to(device).eval()
        for batch_size in args.batch_sizes:
            per_second, per_cpu_second = rate(generator, batch_size, views, args.min_seconds, device)
            row = (
                machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
                torch.__version__, str(device), str(torch.get_num_threads()), args.generator,
                f"{generator.image_resolution}^2", f"{generator.depth_resolution}^2", str(batch_size),
                f"{per_second:.2f}", f"{per_cpu_second:.2f}",
            )  # fmt: skip
            rows.append(row)
            print(" | ".join(row), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
