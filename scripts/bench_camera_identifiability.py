"""How much of a camera error can a latent make up for? Issue 25's bar, half a degree, against what it is worth.

    PYTHONPATH=. python scripts/bench_camera_identifiability.py --seeds 2000 --count 32

For each head of `bench_camera_refinement.py`'s scenes (the same seeds, targets and true cameras), the render's
derivatives (central differences, renders supersampled as that benchmark's `--supersample`) in the projection's
own unknowns: the latent's one row of W, and the camera's yaw, pitch, roll and log distance (turned by the weighed
turn itself either way). A small turn u of the camera, after the best latent and distance make up for it to first
order, leaves the residual (I - P) J u; its PSNR at half a degree says how well a fit must match the target before
that turn can be told apart: a fit whose own error is larger cannot pin the camera to half a degree. Prints per
head the PSNR at 0.5° along yaw, pitch and roll, with the latent held and after it makes up for what it can, and
that of the weakest turn after it.
"""

from __future__ import annotations

import argparse
import math

import torch
from bench_camera_refinement import scene

from regress.camera import adjust_cameras
from regress.faces.quality import to_unit
from regress.generators import GeneratorSpec
from regress.generators.base import Generator


@torch.no_grad()
def jacobians(generator: Generator, w: torch.Tensor, camera: torch.Tensor, step_w: float, step_camera: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Derivatives (pixels, w_dim) of one head's render (images in [0, 1]) in its one-row latent and (pixels, 4)
    in the camera's yaw, pitch, roll (radians) and log distance, by central differences in one batch."""
    dim = generator.w_dim
    shifts = torch.cat([torch.eye(dim), -torch.eye(dim)]).to(w) * step_w
    latents = torch.cat([w[None] + shifts[:, None, :], w[None].expand(8, -1, -1)])
    turns = torch.cat([torch.zeros(2 * dim, 4), torch.cat([torch.eye(4), -torch.eye(4)]) * step_camera]).to(camera)
    images = to_unit(generator.synthesis(latents, adjust_cameras(camera[None].expand(len(turns), -1), turns))["image"])
    images = images.flatten(1).double()
    d_w = (images[:dim] - images[dim : 2 * dim]).T / (2 * step_w)
    d_c = (images[2 * dim : 2 * dim + 4] - images[2 * dim + 4 :]).T / (2 * step_camera)
    return d_w, d_c


def psnr_of_turn(energy: torch.Tensor, pixels: int, degrees: float) -> torch.Tensor:
    """PSNR in dB of a residual whose squared norm is `energy` per radian² of turn, at a turn of `degrees`."""
    return -10 * torch.log10(energy * math.radians(degrees) ** 2 / pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2000, help="first seed (as bench_camera_refinement.py)")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="seeds a scene (as bench_camera_refinement.py's --batch)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--degrees", type=float, default=0.5, help="the turn to weigh")
    parser.add_argument("--step_w", type=float, default=0.03, help="difference step in each of W's numbers (tanh outputs in -1..1)")
    args = parser.parse_args()
    size = args.resolution
    generator = GeneratorSpec("analytic", options={"image_resolution": size, "render_resolution": size * args.supersample, "depth_resolution": size}).create()
    print(f"PSNR of what a {args.degrees}° turn leaves, {size}px (rendered at {size * args.supersample}); 'alone': the latent held, "
          f"'made up': after the latent (one row of W) and the distance make up for it")  # fmt: skip
    print("seed   alone: yaw  pitch  roll | made up: yaw  pitch  roll  weakest (yaw, pitch, roll)")
    weakest_all = []
    for first in range(args.seeds, args.seeds + args.count, args.batch):
        seeds = range(first, min(first + args.batch, args.seeds + args.count))
        _, true, _, w = scene(generator, seeds, 5.0)
        for i, seed in enumerate(seeds):
            d_w, d_c = jacobians(generator, w[i, :1].expand(generator.num_ws, -1), true[i], args.step_w, math.radians(args.degrees))
            pixels = d_w.shape[0]
            # the residual of each turn after least squares in the latent and the log distance
            helpers = torch.cat([d_w, d_c[:, 3:]], dim=1)
            basis, singular, _ = torch.linalg.svd(helpers, full_matrices=False)
            basis = basis[:, singular > singular[0] * 1e-8]
            residual = d_c[:, :3] - basis @ (basis.T @ d_c[:, :3])
            alone, made_up = d_c[:, :3].square().sum(0), residual.square().sum(0)
            energy, direction = torch.linalg.eigh(residual.T @ residual)
            weakest = psnr_of_turn(energy[0], pixels, args.degrees)
            weakest_all.append(float(weakest))
            turn = direction[:, 0] * direction[:, 0].sign()[direction[:, 0].abs().argmax()]
            print(f"{seed}  {'  '.join(f'{v:5.1f}' for v in psnr_of_turn(alone, pixels, args.degrees).tolist())} | "
                  f"{'  '.join(f'{v:5.1f}' for v in psnr_of_turn(made_up, pixels, args.degrees).tolist())}   {float(weakest):5.1f} "
                  f"({', '.join(f'{v:+.2f}' for v in turn.tolist())})", flush=True)  # fmt: skip
    weakest_t = torch.tensor(weakest_all)
    print(f"\nweakest {args.degrees}° turn, after the latent: mean {weakest_t.mean():.1f} dB, "
          f"range {weakest_t.min():.1f}-{weakest_t.max():.1f} dB over {len(weakest_t)} heads")


if __name__ == "__main__":
    main()
