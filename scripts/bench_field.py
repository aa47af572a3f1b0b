"""Launch settings of the fused tri-plane field kernel: ms per image and points/s for each, on one GPU.

Planes come from the full FFHQ-512 configuration with random weights (float16 fast path), the
points are the coarse stratified samples of `published` views (128² rays x 48), features and sigma
as the renderer asks for them, and sigma alone as the density grid does. Every setting must give
the same numbers as the first one (the largest difference is printed). `--importance` also times
the renderer's second call, on its importance samples (jittered CDF levels, as `sample()` draws
them, and the same levels sorted per ray).

    python scripts/bench_field.py --blocks 32 64 128 --warps 2 4 8 [--importance]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from regress.camera import ViewMixture, camera_rays, views_to_cameras
from regress.generators.base import seeded_normal
from regress.generators.eg3d import fused_field as kernel
from regress.generators import GeneratorSpec
from regress.generators.eg3d.renderer import importance_depths, march_weights, stratified_depths


def timed(function, repeats: int) -> float:
    """Milliseconds per call on the device, after one warm-up call."""
    function()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        function()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def time_importance_calls(generator, planes, origins, directions, depths, repeats: int) -> None:
    """Print the field's cost on the renderer's importance samples (jittered CDF levels, and sorted per ray) beside the coarse."""
    n, m, d = depths.shape
    coarse = (origins[..., None, :] + depths[..., None] * directions[..., None, :]).reshape(n, -1, 3)
    with torch.no_grad():
        renderer = generator.renderer
        weights = march_weights(depths, generator._field(planes, coarse, with_features=False)[0].reshape(n, m, d), renderer.density_bias)
        seeded = torch.Generator(device=depths.device).manual_seed(0)
        levels = torch.rand((n, m, renderer.importance_samples_per_ray), generator=seeded, device=depths.device)
        for name, cdf_levels in (("jittered levels", levels), ("levels sorted per ray", levels.sort(dim=-1).values)):
            fine = importance_depths(depths, weights, cdf_levels)
            points = (origins[..., None, :] + fine[..., None] * directions[..., None, :]).reshape(n, -1, 3)
            field = timed(lambda: generator._field(planes, points), repeats) / n
            sigma_only = timed(lambda: generator._field(planes, points, with_features=False), repeats) / n
            print(f"importance, {name}: field {field:.3f} ms/image, sigma only {sigma_only:.3f} ms/image")
        print(f"coarse, same settings: field {timed(lambda: generator._field(planes, coarse), repeats) / n:.3f} ms/image\n")


def time_compiled_call(generator, planes, points, repeats: int) -> None:
    """Print the field's cost inside torch.compile with CUDA graphs, as synthesis runs it, beside the eager call."""
    n = points.shape[0]
    with torch.no_grad():
        compiled = torch.compile(lambda q: generator._field(planes, q), mode="reduce-overhead", dynamic=False)
        for _ in range(3):  # warm-up, recording, first replay
            compiled(points)
        print(f"inside torch.compile (CUDA graphs): field {timed(lambda: compiled(points), repeats) / n:.3f} ms/image")
        print(f"eager, same settings: field {timed(lambda: generator._field(planes, points), repeats) / n:.3f} ms/image\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--importance", action="store_true", help="also time the importance samples' call (launch settings in use)")
    parser.add_argument(
        "--compiled", action="store_true", help="also time the call inside torch.compile with CUDA graphs, as synthesis runs it"
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = GeneratorSpec("eg3d", options={"render_precision": "float16"}).create().cuda()
    seeds = list(range(args.batch_size))
    with torch.no_grad():
        z = seeded_normal(seeds, generator.z_dim).cuda()
        camera = views_to_cameras(ViewMixture.load("published").draw_many(seeds)).cuda()
        planes = generator.planes(generator.mapping(z, camera, psi=0.7))
        origins, directions = camera_rays(camera, generator.depth_resolution)
        n, m, _ = origins.shape
        depths = stratified_depths((n, m), generator.config.samples_per_ray, generator.ray_start, generator.ray_end, None, origins.device)
        points = (origins[..., None, :] + depths[..., None] * directions[..., None, :]).reshape(n, -1, 3)
    if args.importance:
        time_importance_calls(generator, planes, origins, directions, depths, args.repeats)
    if args.compiled:
        time_compiled_call(generator, planes, points, args.repeats)
    per_image = points.shape[1]
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; batch {n}, {per_image} points per image\n")
    print("| block | warps | field ms/image | Gpoints/s | sigma-only ms/image | max diff vs first |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    reference = None
    for block, warps in itertools.product(args.blocks, args.warps):
        kernel.BLOCK_POINTS, kernel.NUM_WARPS = block, warps
        with torch.no_grad():
            try:
                field = timed(lambda: generator._field(planes, points), args.repeats) / n
                sigma_only = timed(lambda: generator._field(planes, points, with_features=False), args.repeats) / n
            except Exception as error:  # a setting the compiler refuses (too many registers, shared memory)
                print(f"| {block} | {warps} | failed: {type(error).__name__} | | | |")
                continue
            sigma, features = generator._field(planes, points)
        if reference is None:
            reference = sigma, features
        diff = max((sigma - reference[0]).abs().max().item(), (features.float() - reference[1].float()).abs().max().item())
        print(f"| {block} | {warps} | {field:.3f} | {per_image / field / 1e6:.2f} | {sigma_only:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
