"""Throughput of the EG3D generator: images/s and peak memory for a few batch sizes at 512².

Full FFHQ-512 configuration with random weights (no checkpoint needed), float32, mapping +
synthesis under `torch.no_grad()`. Prints a Markdown table with the machine and versions.

    python scripts/bench_eg3d.py                    # batch 1, 8, 32 on the GPU
    python scripts/bench_eg3d.py --jitter --iters 5 # training-style jittered rendering
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from regress.camera import ViewMixture, frontal_camera, views_to_cameras
from regress.generators import create_generator
from regress.generators.base import seeded_normal


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def bench(generator, batch: int, iters: int, warmup: int, jitter: bool, device: torch.device) -> tuple[float, float]:
    """(images per second, peak memory in GiB or NaN on the CPU) for one batch size."""
    seeds = list(range(batch))
    z = seeded_normal(seeds, generator.z_dim).to(device)
    camera = views_to_cameras(ViewMixture.load("published").draw_many(seeds)).to(device)
    camera_cond = frontal_camera(batch).to(device)

    def step() -> None:
        w = generator.mapping(z, camera_cond, psi=0.7)
        generator.synthesis(w, camera, noise_seeds=seeds if jitter else None)

    with torch.no_grad():
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return batch * iters / elapsed, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jitter", action="store_true", help="training-style jittered samples (per-seed CPU draws)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (default: off)")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    generator = create_generator("eg3d").to(device).eval()
    print(f"machine: {machine(device)}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}")
    print(
        f"config: full FFHQ-512, random weights, float32, TF32 {'on' if args.tf32 else 'off'}, "
        f"{'jittered' if args.jitter else 'deterministic'} rendering, {args.iters} timed iterations after {args.warmup} warm-up\n"
    )
    print("| batch | images/s | ms/image | peak memory (GiB) |")
    print("| ---: | ---: | ---: | ---: |")
    for batch in args.batch_sizes:
        try:
            rate, peak = bench(generator, batch, args.iters, args.warmup, args.jitter, device)
        except torch.cuda.OutOfMemoryError:
            print(f"| {batch} | out of memory | | |")
            torch.cuda.empty_cache()
            continue
        print(f"| {batch} | {rate:.1f} | {1000 / rate:.1f} | {peak:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
