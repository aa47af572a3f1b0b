"""The latent regressor as an inversion encoder, against projection, on held-out seeds of the analytic generator.

    python scripts/bench_encoder.py --checkpoint data/runs/default/checkpoints/last.ckpt
    python scripts/bench_encoder.py --checkpoint latent.ckpt --seeds 32 --k 20 --steps 200 --json

Renders `--seeds` held-out seeds (views from the published mixture, no jitter), then inverts them
with the mean latent, the regressor, the regressor + k projection steps, and projection from the
mean latent (k and N steps). Each w is re-rendered and scored against the true w's render at the
sample's camera and at the novel views (regress.models.metrics.ImageMetrics). Markdown to stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

from regress.camera import ViewMixture
from regress.evaluation.encoder import latent_encoder, load_latent_regressor
from regress.generators import create_generator
from regress.generators.base import Generator
from regress.inversion.project import ProjectionConfig, project
from regress.models.metrics import ImageMetrics
from regress.sample import Batch, image_to_float

from bench_synthesis import machine, synchronize  # scripts/ is on sys.path when this runs as a script

HELD_OUT_START = 10_000  # above the default validation seeds [0, 64), far below the training seeds (>= 2**62)


def score(name: str, generator: Generator, w: torch.Tensor, batch: Batch, seconds: float) -> dict:
    """One table row: image-space scores of latents `w` for the batch, and the seconds per image it took."""
    metric = ImageMetrics()
    metric.update(generator, w, batch["w"], batch["camera"])
    scores = {k: float(v) for k, v in metric.compute().items()}
    return {"method": name, **scores, "ms_per_image": 1000 * seconds / w.shape[0]}


def timed(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """The result of `run` and its wall time until the device finished, after one untimed warm-up call."""
    run()
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - start


def rows(args: argparse.Namespace) -> list[dict]:
    generator = create_generator("analytic", None, **json.loads(args.generator_options)).to(args.device).eval()
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    batch = generator.sample(seeds, ViewMixture.load(args.views).draw_many(list(seeds)), psi=args.psi, jitter=False)
    target = image_to_float(batch["image"])
    table = [score("mean latent", generator, generator.mean_latent()[None].expand_as(batch["w"]).to(batch["w"]), batch, 0.0)]

    def projection(steps: int, init: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        result = project(generator, target, batch["camera"], ProjectionConfig(steps=steps), init=init)
        return result.w, result.seconds

    if args.checkpoint:
        encode = latent_encoder(load_latent_regressor(args.checkpoint, generator))
        predicted, seconds = timed(lambda: encode(batch["image"]), generator.device)
        table.append(score("regressor", generator, predicted, batch, seconds))
        w, projected = projection(args.k, predicted)
        table.append(score(f"regressor + {args.k} projection steps", generator, w, batch, seconds + projected))
    for steps in dict.fromkeys([args.k, args.steps]):
        w, seconds = projection(steps, None)
        table.append(score(f"projection, {steps} steps", generator, w, batch, seconds))
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| method | PSNR (dB) | SSIM | novel-view PSNR (dB) | novel-view SSIM | depth L1 | time per image (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in table:
        ms = f"{r['ms_per_image']:.1f}" if r["ms_per_image"] else "–"
        lines.append(f"| {r['method']} | {r['image_psnr']:.1f} | {r['image_ssim']:.3f} | {r['novel_psnr']:.1f} | {r['novel_ssim']:.3f} "
                     f"| {r['render_depth_l1']:.4f} | {ms} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a LatentRegressor checkpoint (python -m regress.fit --model latent); without it only projection")
    parser.add_argument("--seeds", type=int, default=16, help="held-out seeds, all methods on the same ones")
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_START)
    parser.add_argument("--k", type=int, default=20, help="projection steps after the regressor (and from the mean latent, to compare)")
    parser.add_argument("--steps", type=int, default=200, help="projection steps from the mean latent")
    parser.add_argument("--views", default="published", help="view mixture the held-out cameras are drawn from")
    parser.add_argument("--psi", type=float, default=0.7)
    parser.add_argument("--generator-options", default='{"image_resolution": 128}', help="analytic generator options (JSON)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")
    args = parser.parse_args()
    table = rows(args)
    if args.json:
        print(json.dumps({"machine": machine(), "settings": vars(args), "rows": table}, indent=2))
    else:
        print(f"{machine()}; {args.seeds} held-out seeds from {args.seed_start}, views {args.views}, no jitter\n")
        print(markdown(table))


if __name__ == "__main__":
    main()
