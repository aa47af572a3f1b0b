"""Where a batch's mesh time goes on the GPU: each phase of coarse-to-fine meshing (with `sides` stand-ins, as shards
are made) timed with a sync around it, and optionally torch.profiler's table of one batch, kernels by their own device
time (on a GPU; it runs on a CPU too). EG3D with random full-size weights, float16 field.

    python scripts/bench_mesh_phases.py --resolution 256 --stride 8 --heads 32 [--profile]
    PYTHONPATH=OLD_CHECKOUT python scripts/bench_mesh_phases.py ...      # another commit's regress, same script

Each phase is run twice; the second repeat is the steady figure (the first includes allocation and warm-up).
"""

from __future__ import annotations

import argparse
import time

import torch

from regress.camera import ViewMixture
from regress.generators import GeneratorSpec
from regress.geometry.grids import coarse_to_fine_grid, density_grid
from regress.geometry.marching_cubes import largest_pieces, marching_cubes
from regress.geometry.meshes import extract_meshes, grids_to_ply
from regress.runtime import deterministic_kernels, pick_device, synchronize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--level", type=float, default=0.9722, help="random weights: a level their field crosses often")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's table of one batch")
    args = parser.parse_args()
    device = deterministic_kernels(pick_device())
    generator = GeneratorSpec("eg3d", None, {"render_precision": "float16"}).build(device)
    r, n, level = args.resolution, args.heads, args.level

    def timed(name, make):
        synchronize(device)
        start = time.perf_counter()
        result = make()
        synchronize(device)
        print(f"{name:40s} {1000 * (time.perf_counter() - start) / n:8.2f} ms/head", flush=True)
        return result

    with torch.inference_mode():
        w = generator.sample(list(range(n)), ViewMixture.load("published"))["w"]
        for repeat in range(2):
            print(f"--- {r}^3, stride {args.stride}, {n} heads, repeat {repeat}")
            if r <= 256:
                timed("dense grid", lambda: density_grid(generator, w, r))
            refined = timed("coarse-to-fine grid", lambda: coarse_to_fine_grid(generator, w, r, args.stride, level, stand_ins="sides"))
            grids = refined.values
            _, faces, vertex_grid = timed("marching cubes", lambda: marching_cubes(grids, level))
            timed("largest pieces", lambda: largest_pieces(faces, vertex_grid, n))
            timed("extract_meshes", lambda: extract_meshes(grids, level, generator.box_size))
            files = timed("grids_to_ply", lambda: grids_to_ply(grids, level, generator.box_size))
            print(f"points/head {sum(refined.points_evaluated) / n:,.0f}, faces/head {len(faces) / n:,.0f}, "
                  f"MB/head {sum(len(f) for f in files) / n / 1e6:.2f}", flush=True)  # fmt: skip
            files = grids = refined = None  # freed before the next repeat
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                grids_to_ply(coarse_to_fine_grid(generator, w, r, args.stride, level, stand_ins="sides").values, level, generator.box_size)
                synchronize(device)
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=60))


if __name__ == "__main__":
    main()
