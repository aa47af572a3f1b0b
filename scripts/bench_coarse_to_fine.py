"""Dense against coarse-to-fine density grids on the same seeds: points through the field per head, seconds per stage,
and whether the meshes agree. Prints a Markdown table.

Both paths are `regress.geometry` as `generate` runs them (`density_grid`, `grids_to_ply` with the largest piece):
the dense grid at each resolution, then `coarse_to_fine_grid` at each stride. Meshes agree when their PLY bytes are
equal; otherwise the table gives the vertex and face counts and the largest distance (in grid cells) from a vertex
of one mesh to the nearest of the other. `--dense-up-to` skips the dense grids above a size (a CPU at 512^3).

    python scripts/bench_coarse_to_fine.py                                                # analytic head, this CPU
    python scripts/bench_coarse_to_fine.py --generator eg3d --generator-options '{"render_precision": "float16"}' \
        --resolutions 256 512 --strides 4 8 --batch-size 8 --level 0.9722                 # EG3D, random weights, GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from regress.camera import ViewMixture
from regress.generators import Generator, GeneratorSpec
from regress.geometry.grids import coarse_to_fine_grid, density_grid
from regress.geometry.meshes import grids_to_ply, mesh_from_ply
from regress.runtime import deterministic_kernels, pick_device, synchronize


def timed(device: torch.device, make):
    """make()'s result and its seconds, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = make()
    synchronize(device)
    return result, time.perf_counter() - start


def disagreement(ours: bytes, theirs: bytes, spacing: float) -> str:
    """'same bytes', or the vertex and face counts of both meshes and their largest vertex-to-vertex gap in grid cells."""
    if ours == theirs:
        return "same bytes"
    a, b = mesh_from_ply(ours), mesh_from_ply(theirs)
    gap = float("inf")
    if len(a.vertices) and len(b.vertices):
        gap = max(cKDTree(b.vertices).query(a.vertices)[0].max(), cKDTree(a.vertices).query(b.vertices)[0].max())
    return f"{len(a.vertices)}/{len(b.vertices)} vertices, {len(a.faces)}/{len(b.faces)} faces, gap {gap / spacing:.2g} cells"


def measure(generator: Generator, w: torch.Tensor, level: float, resolutions: list[int], strides: list[int], dense_up_to: int, device: torch.device) -> list[tuple]:
    """(resolution, path, points per head, density grid seconds, mesh seconds, agreement) of each grid size and path."""
    rows = []
    for resolution in resolutions:
        dense_files = None
        if resolution <= dense_up_to:
            grids, grid_seconds = timed(device, lambda: density_grid(generator, w, resolution))
            dense_files, mesh_seconds = timed(device, lambda: grids_to_ply(grids, level, generator.box_size))
            dense_files = [bytes(f) for f in dense_files]  # compared below; the copy is no part of the meshes' time
            del grids
            rows.append((resolution, "dense", resolution**3, grid_seconds, mesh_seconds, "–"))
        for stride in strides:
            refined, grid_seconds = timed(device, lambda: coarse_to_fine_grid(generator, w, resolution, stride, level))
            files, mesh_seconds = timed(device, lambda grids=refined.values: grids_to_ply(grids, level, generator.box_size))
            agreement = _agreement([bytes(f) for f in files], dense_files, generator.box_size / (resolution - 1))
            rows.append((resolution, f"coarse to fine, stride {stride}", float(np.mean(refined.points_evaluated)), grid_seconds, mesh_seconds, agreement))
            del refined
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="analytic")
    parser.add_argument("--checkpoint", default=None, help="the generator's weights (eg3d); default: random full-size weights")
    parser.add_argument("--generator-options", default="{}", help='JSON backend options, e.g. \'{"render_precision": "float16"}\'')
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--strides", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batch-size", type=int, default=4, help="heads, the seeds 0 .. batch-size - 1")
    parser.add_argument("--level", type=float, default=None, help="mesh level; default the generator's surface level (random EG3D weights: 0.9722)")
    parser.add_argument("--dense-up-to", type=int, default=1024, help="no dense grid above this resolution")
    args = parser.parse_args()

    device = deterministic_kernels(pick_device())
    generator = GeneratorSpec(args.generator, args.checkpoint, json.loads(args.generator_options)).build(device)
    level = generator.surface_level if args.level is None else args.level
    with torch.inference_mode():
        w = generator.sample(list(range(args.batch_size)), ViewMixture.load("published"))["w"]
        measure(generator, w, level, args.resolutions[:1], args.strides, args.dense_up_to, device)  # warm-up: compilation, caches
        rows = measure(generator, w, level, args.resolutions, args.strides, args.dense_up_to, device)
    heads = args.batch_size
    print(f"\n{args.generator} generator on {device}, {heads} heads (seeds 0-{heads - 1}), level {level:.4g}, options {args.generator_options}\n")
    print("| grid | path | points per head | share of dense | of dense 256³ | density grid s/head | meshes s/head | meshes vs dense |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for resolution, path, points, grid_seconds, mesh_seconds, agreement in rows:
        print(f"| {resolution}³ | {path} | {points:,.0f} | {points / resolution**3:.3f} | {points / 256**3:.3f} | "
              f"{grid_seconds / heads:.4f} | {mesh_seconds / heads:.4f} | {agreement} |")  # fmt: skip


def _agreement(files: list[bytes], dense_files: list[bytes] | None, spacing: float) -> str:
    """How many meshes equal the dense ones byte for byte, and how the others differ."""
    if dense_files is None:
        return "no dense grid"
    same = sum(a == b for a, b in zip(files, dense_files))
    return "; ".join([f"{same}/{len(files)} same bytes", *(disagreement(a, b, spacing) for a, b in zip(files, dense_files) if a != b)])


if __name__ == "__main__":
    main()
