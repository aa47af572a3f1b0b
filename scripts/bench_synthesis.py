"""Samples per second of a registered generator's `sample()`, for batch sizes and image resolutions.

    python scripts/bench_synthesis.py --generator analytic
    python scripts/bench_synthesis.py --generator eg3d --no-jitter --batch-sizes 1 8 32          # float32 reference
    python scripts/bench_synthesis.py --generator eg3d --no-jitter --batch-sizes 1 8 32 \
        --options '{"render_precision": "float16", "compile": true}'                                  # EG3D fast path
    python scripts/bench_synthesis.py --generator eg3d --fidelity .gpu/eg3d-reference/network.pkl \
        --options '{"render_precision": "float16"}'                                                   # fast vs float32

Prints one table row per (resolution, batch size): machine, torch version, device, threads,
generator, options, image and depth resolution, batch size, samples/s (wall time, after two warm-up
batches), samples per CPU-second of this process, and the peak GPU memory. EG3D without a
checkpoint is the full FFHQ-512 configuration with random weights (the compute of the released
ones). `--fidelity` instead compares the options' images and depth with the float32 path on a
checkpoint's weights: PSNR (peak-to-peak 2, images in [-1, 1]) and the largest depth error.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from regress.camera import ViewMixture, frontal_camera, views_to_cameras
from regress.generators import GeneratorSpec, available_generators
from regress.generators.base import seeded_normal
from regress.runtime import deterministic_kernels, load_compile_cache, save_compile_cache, synchronize


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



def rate(
    generator, batch_size: int, views: ViewMixture, min_seconds: float, device: torch.device, jitter: bool, in_flight: int = 0
) -> tuple[float, float, float]:
    """Samples per wall second and per CPU second of this process over at least `min_seconds` (fresh seeds), peak GiB.

    The host queues groups of about 64 samples before waiting for the device, so host work of one
    batch (seeded draws, cameras, launches) overlaps the device work of the one before. With
    `in_flight` > 0 the queue never drains instead: before queuing a batch the host waits only for the
    batch `in_flight` places back, as `regress.generate` does.
    """
    next_seed = 0

    def batch() -> None:
        nonlocal next_seed
        generator.sample(range(next_seed, next_seed + batch_size), views, jitter=jitter)
        next_seed += batch_size

    with torch.no_grad():
        batch()  # warm-up: compilation, cuDNN's algorithm search
        batch()
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start, cpu_start, done = time.perf_counter(), time.process_time(), 0
        queued: list[torch.cuda.Event] = []
        while in_flight > 0:
            if len(queued) == in_flight:
                queued.pop(0).synchronize()
            batch()
            done += batch_size
            queued.append(torch.cuda.Event())
            queued[-1].record()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                synchronize(device)
                elapsed = time.perf_counter() - start
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                return done / elapsed, done / (time.process_time() - cpu_start), peak
        while True:  # batches are queued back to back, as a training or generation loop would: sync per group
            for _ in range(max(1, 64 // batch_size)):
                batch()
                done += batch_size
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
                return done / elapsed, done / (time.process_time() - cpu_start), peak


def fidelity(checkpoint: str, options: dict, device: torch.device, seeds: range) -> list[tuple[str, str]]:
    """PSNR of the options' images against float32's (peak-to-peak 2) and the largest depth / mask errors, same w and cameras."""
    reference = GeneratorSpec("eg3d", checkpoint).build(device)
    fast = GeneratorSpec("eg3d", checkpoint, options).build(device)
    views = ViewMixture.load("published").draw_many(list(seeds))
    z = seeded_normal(list(seeds), reference.z_dim).to(device)
    camera = views_to_cameras(views).to(device)
    with torch.no_grad():
        w = reference.mapping(z, frontal_camera(len(seeds)).to(device), psi=0.7)
        a, b = reference.synthesis(w, camera), fast.synthesis(w, camera)
    mse = (a["image"] - b["image"].float()).square().mean()
    mse_clipped = (a["image"].clamp(-1, 1) - b["image"].float().clamp(-1, 1)).square().mean()
    return [
        ("image PSNR (dB)", f"{10 * math.log10(4 / mse.item()):.2f}"),
        ("image PSNR, clipped to [-1, 1] (dB)", f"{10 * math.log10(4 / mse_clipped.item()):.2f}"),
        ("depth max error", f"{(a['depth'] - b['depth']).abs().max().item():.2e}"),
        ("mask max error", f"{(a['mask'] - b['mask']).abs().max().item():.2e}"),
        ("image_raw max error", f"{(a['image_raw'] - b['image_raw'].float()).abs().max().item():.2e}"),
    ]


def profile(generator, batch_size: int, views: ViewMixture, device: torch.device, jitter: bool, rows: int) -> str:
    """The most expensive device kernels of one batch (torch.profiler), after a warm-up batch."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.no_grad():
        generator.sample(range(batch_size), views, jitter=jitter)
        synchronize(device)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generator.sample(range(batch_size), views, jitter=jitter)
            synchronize(device)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="analytic", choices=available_generators())
    parser.add_argument("--checkpoint", default=None, help="weights file for backends that need one (eg3d: none is random weights)")
    parser.add_argument("--options", default="{}", help='JSON backend options, e.g. \'{"render_precision": "float16", "compile": true}\'')
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--resolutions", type=int, nargs="+", default=None,
        help="image resolutions to build the generator with (default: 128 and 512 for analytic, the checkpoint's own otherwise)",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--views", default="published", help="view mixture: a short name of regress/configs/views or a YAML path")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each row for at least this long")
    parser.add_argument("--no-jitter", action="store_true", help="deterministic rendering (no per-seed jitter)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels, as regress.generate asks for")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (default: off)")
    parser.add_argument("--fidelity", default=None, metavar="CHECKPOINT", help="compare --options with float32 on these weights")
    parser.add_argument("--profile", action="store_true", help="print the top device kernels of one batch per row")
    parser.add_argument("--profile-rows", type=int, default=25, help="how many kernels --profile prints")
    parser.add_argument(
        "--in-flight", type=int, default=0, metavar="K",
        help="GPU only: keep K batches queued and never drain (as regress.generate does) instead of a sync every 64 samples",
    )  # fmt: skip
    parser.add_argument(
        "--compile-cache", default=None, metavar="FILE", help="torch.compile cache file: preloaded if it exists, else written at the end"
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in (args.checkpoint, args.fidelity):
        if path is not None and not Path(path).exists():
            parser.error(f"checkpoint {path} does not exist")
    options = json.loads(args.options)
    device = torch.device(args.device)
    if args.in_flight and device.type != "cuda":
        parser.error("--in-flight waits on CUDA events: it needs a GPU device")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    if args.deterministic:
        deterministic_kernels(device)
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, numpy {np.__version__}"
    print(f"machine: {machine()}; device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; {versions}")
    if args.fidelity:
        print(f"\nfidelity of {json.dumps(options)} against float32 on {args.fidelity}, 8 samples, TF32 {'on' if args.tf32 else 'off'}\n")
        print("| measure | value |\n| --- | ---: |")
        for name, value in fidelity(args.fidelity, options, device, range(8)):
            print(f"| {name} | {value} |")
        return
    write_cache = args.compile_cache is not None and not load_compile_cache(args.compile_cache)
    resolutions = args.resolutions or ([128, 512] if args.generator == "analytic" else [None])
    views = ViewMixture.load(args.views)
    header = ("device", "threads", "generator", "options", "jitter", "image", "depth", "batch", "samples/s", "samples/cpu-s", "peak GiB")
    rows = []
    print(" | ".join(header), flush=True)
    for resolution in resolutions:
        kwargs = {**options, **({} if resolution is None else {"image_resolution": resolution})}
        generator = GeneratorSpec(args.generator, args.checkpoint, kwargs).create().to(device)  # its own instance: each row's peak memory is its own
        for batch_size in args.batch_sizes:
            try:
                per_second, per_cpu_second, peak = rate(
                    generator, batch_size, views, args.min_seconds, device, not args.no_jitter, args.in_flight
                )
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                per_second = per_cpu_second = peak = math.nan
            row = (
                torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", str(torch.get_num_threads()), args.generator,
                json.dumps(options), "no" if args.no_jitter else "yes", f"{generator.image_resolution}^2", f"{generator.depth_resolution}^2",
                str(batch_size), f"{per_second:.2f}", f"{per_cpu_second:.2f}", f"{peak:.2f}",
            )  # fmt: skip
            rows.append(row)
            print(" | ".join(row), flush=True)
            if args.profile:
                print(profile(generator, batch_size, views, device, not args.no_jitter, args.profile_rows), flush=True)
    if write_cache:
        save_compile_cache(args.compile_cache)
    queue = f"{args.in_flight} batches in flight" if args.in_flight else "a sync every 64 samples"
    print(f"\n{machine()}, TF32 {'on' if args.tf32 else 'off'}{', deterministic kernels' if args.deterministic else ''}, {queue}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
