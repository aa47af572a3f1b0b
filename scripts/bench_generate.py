"""Shard pre-generation and reading rates: samples/s written with and without meshes, read with 2 workers.

Each write run is a fresh `regress.generate.generate` into a temporary folder; the read run
iterates the ShardDataModule's finite training pipeline over those shards. A stage breakdown
(sampling, density grid, meshes) says where mesh time goes. Prints a Markdown table.

    python scripts/bench_generate.py                                   # analytic, on this CPU
    python scripts/bench_generate.py --generator eg3d --num-samples 512 --mesh-resolution 256 \
        --batch-size 8 --workers 14                                    # EG3D, random full-size weights, GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from regress.camera import ViewMixture
from regress.datamodules.shards import ShardDataModule
from regress.generate import generate
from regress.generators import GeneratorSpec
from regress.geometry.grids import density_grid
from regress.geometry.meshes import grids_to_ply
from regress.runtime import deterministic_kernels, pick_device, synchronize


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), {torch.get_num_threads()} CPU threads"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"



def stage_times(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, float], float]:
    """Seconds per sample of each generation stage, for one batch after a warm-up batch, and the mesh level.

    The level is the generator's surface level, or where it has no surface there (random EG3D
    weights stay far below it) the `--level-quantile` of the first grid's densities, so the
    meshing is timed, and the write run meshes, on surfaces of the generator's own field. With
    `--mesh-coarse-stride` the timed grids are coarse to fine at that level (the first, dense, finds it).
    """
    deterministic_kernels(device)  # as `generate` runs
    generator = GeneratorSpec(args.generator, args.checkpoint, json.loads(args.generator_options)).build(device)  # generate's instance too
    mixture, seeds = ViewMixture.load("published"), list(range(args.batch_size))
    times = {}
    level, coarse_stride = None, None
    with torch.inference_mode():
        for _ in range(2):
            synchronize(device)
            start = time.perf_counter()
            batch = generator.sample(seeds, mixture)
            synchronize(device)
            times["sample"] = (time.perf_counter() - start) / len(seeds)
            start = time.perf_counter()
            grids = density_grid(generator, batch["w"], args.mesh_resolution, coarse_stride=coarse_stride, level=level)
            synchronize(device)
            times["density grid"] = (time.perf_counter() - start) / len(seeds)
            level = mesh_level(generator, grids, args.level_quantile) if level is None else level
            coarse_stride = args.mesh_coarse_stride
        for _ in range(2):  # the second is timed
            synchronize(device)
            start = time.perf_counter()
            meshes = grids_to_ply(grids, level, generator.box_size)
            times["meshes: march, largest piece, PLY to CPU"] = (time.perf_counter() - start) / len(seeds)
    times["mesh.ply MiB"] = float(np.mean([len(m) for m in meshes])) / 2**20
    return times, level


def mesh_level(generator: torch.nn.Module, grids: list[torch.Tensor], quantile: float) -> float:
    """The generator's surface level, or where none of its grids reach it (random EG3D weights), the `quantile`
    of the first grid's densities (subsampled to 2**24 values for torch.quantile)."""
    if any(grid.max() > generator.surface_level for grid in grids):
        return generator.surface_level
    return float(torch.quantile(grids[0].flatten()[:: max(1, grids[0].numel() // 2**24)].float(), quantile))


def read_rate(root: Path, batch_size: int, workers: int, with_mesh: bool, samples: int) -> tuple[int, float]:
    """(samples, seconds) read by the training pipeline (resampling the shards) after its first batch, so worker start is left out."""
    module = ShardDataModule(root, batch_size=batch_size, val_shards=0, image_size=None, epoch_length=samples + batch_size, num_workers=workers, with_mesh=with_mesh)
    batches = iter(module.train_dataloader())
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["meta"])
    seconds = time.perf_counter() - start
    del batches  # its (persistent) workers stop here, not in the next read run's forked workers
    return count, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="analytic")
    parser.add_argument("--checkpoint", default=None, help="the generator's weights (eg3d); default: random full-size weights")
    parser.add_argument("--generator-options", default="{}", help='JSON backend options, e.g. \'{"image_resolution": 256}\'')
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--samples-per-shard", type=int, default=16)
    parser.add_argument("--mesh-resolution", type=int, default=128)
    parser.add_argument("--mesh-coarse-stride", type=int, default=None, help="coarse-to-fine density grids from every K-th point (default: dense)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="compression processes of the write runs")
    parser.add_argument("--read-workers", type=int, default=2)
    parser.add_argument("--read-samples", type=int, default=1024, help="samples read per read run (shards are resampled)")
    parser.add_argument("--read-only", action="store_true", help="only read the shards a run with --output left there")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: a temporary folder, removed)")
    parser.add_argument("--target", type=int, default=50_000, help="samples to extrapolate the mesh run to")
    parser.add_argument("--level-quantile", type=float, default=0.8, help="mesh level quantile where the generator has no surface")
    parser.add_argument("--runs", nargs="+", choices=("plain", "mesh"), default=["plain", "mesh"], help="write runs: without and with meshes")
    args = parser.parse_args()

    device = pick_device()
    root = Path(tempfile.mkdtemp(prefix="bench-generate-")) if args.output is None else args.output
    rows = []
    try:
        stages, level = ({}, None) if args.read_only or "mesh" not in args.runs else stage_times(args, device)
        if stages:  # printed now: the write runs below take long
            print(f"\nmesh level {level:.4g}\n\n| stage (per sample) | seconds |\n| --- | ---: |")
            for name, value in stages.items():
                print(f"| {name} | {value:.2f} |" if name.endswith("MiB") else f"| {name} | {value:.4f} |", flush=True)
        runs = [("write, no mesh", False)] * ("plain" in args.runs) + [(f"write, {args.mesh_resolution}³ meshes" + (f" (coarse stride {args.mesh_coarse_stride})" if args.mesh_coarse_stride else ""), True)] * ("mesh" in args.runs)
        for label, mesh in () if args.read_only else runs:
            output = root / ("mesh" if mesh else "plain")
            summary = generate(
                output, generator=args.generator, checkpoint=args.checkpoint, generator_options=json.loads(args.generator_options),
                num_samples=args.num_samples, samples_per_shard=args.samples_per_shard, with_mesh=mesh,
                mesh_resolution=args.mesh_resolution, mesh_level=level, mesh_coarse_stride=args.mesh_coarse_stride, batch_size=args.batch_size,
                workers=args.workers, progress=False,
            )  # fmt: skip
            rows.append((label, summary["samples"], summary["seconds"], summary["bytes"] / summary["samples"] / 2**20))
            if summary["steady_samples_per_second"]:  # the same run without its first batch (compilation, warm-up)
                steady_seconds = summary["seconds"] - summary["warmup_seconds"]
                steady_samples = round(summary["steady_samples_per_second"] * steady_seconds)
                rows.append((f"{label}, after the first batch", steady_samples, steady_seconds, summary["bytes"] / summary["samples"] / 2**20))
        for label, folder in (("read, no mesh", "plain"), ("read, meshes decoded", "mesh")):
            if not (root / folder).is_dir():
                continue
            samples, seconds = read_rate(root / folder, args.batch_size, args.read_workers, folder == "mesh", args.read_samples)
            rows.append((f"{label} ({args.read_workers} workers)", samples, seconds, float("nan")))
    finally:
        if args.output is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.generator} generator, {machine(device)}, batch {args.batch_size}, {args.workers} compression workers, options {args.generator_options}\n")
    print("| run | samples | seconds | samples/s | MiB/sample |\n| --- | ---: | ---: | ---: | ---: |")
    for label, samples, seconds, size in rows:
        print(f"| {label} | {samples} | {seconds:.1f} | {samples / seconds:.2f} | {size:.3f} |")
    if stages:
        mesh_rows = [row for row in rows if "meshes" in row[0] and not row[0].startswith("read")]
        warmup = mesh_rows[0][2] - mesh_rows[-1][2]  # seconds before the steady rate
        mesh_rate = mesh_rows[-1][1] / mesh_rows[-1][2]
        device_rate = 1 / (stages["sample"] + stages["density grid"] + stages["meshes: march, largest piece, PLY to CPU"])
        print(f"\nrender stages alone (sample, grid, meshes): {device_rate:.1f} samples/s")
        minutes = (warmup + args.target / mesh_rate) / 60
        print(f"{args.target} samples with {args.mesh_resolution}³ meshes: {warmup:.0f} s warm-up, then {mesh_rate:.2f} samples/s: {minutes:.1f} min")

if __name__ == "__main__":
    main()
