"""The latent regressor as an inversion encoder, against projection, on held-out seeds (regress.evaluation.encoder_table).

    python scripts/bench_encoder.py --checkpoint data/runs/default/checkpoints/last.ckpt
    python scripts/bench_encoder.py --checkpoint latent.ckpt --seeds 32 --k 5 10 20 40 --steps 200 --json
    python scripts/bench_encoder.py --generator eg3d --checkpoint-generator ffhq.pkl --generator-options '{}' --checkpoint latent.ckpt

Renders `--seeds` held-out seeds (views from the mixture, no jitter), then inverts them with the mean
latent, the regressor, the regressor + k projection steps for each k (no latent noise, a small step:
--refine-lr, --refine-noise), and projection from the mean latent (each k and --steps steps); scores
each re-render against the true latent's, and says the fewest k that reach the --steps projection.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from regress.evaluation.encoder import latent_encoder, load_latent_regressor
from regress.evaluation.encoder_table import HEADER, HELD_OUT_START, encoder_table, markdown, markdown_row
from regress.generators import create_generator
from regress.inversion.project import REFINE

from bench_synthesis import machine  # scripts/ is on sys.path when this runs as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a LatentRegressor checkpoint (python -m regress.fit --model latent); without it only projection")
    parser.add_argument("--seeds", type=int, default=16, help="held-out seeds, all methods on the same ones")
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_START)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 40], help="projection steps after the regressor (and from the mean latent)")
    parser.add_argument("--steps", type=int, default=200, help="projection steps from the mean latent that the regressor's start should reach")
    parser.add_argument("--refine-lr", type=float, default=REFINE.lr, help="peak learning rate of the projection from the regressor's w")
    parser.add_argument("--refine-noise", type=float, default=REFINE.noise, help="its latent noise, a fraction of the prior's spread")
    parser.add_argument("--views", default="published", help="view mixture the held-out cameras are drawn from")
    parser.add_argument("--psi", type=float, default=0.7)
    parser.add_argument("--generator", default="analytic", help="generator backend (analytic, eg3d)")
    parser.add_argument("--checkpoint-generator", help="the generator's weights (eg3d)")
    parser.add_argument("--generator-options", default='{"image_resolution": 128}', help="generator options (JSON); '{}' for eg3d")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the table as JSON instead of Markdown")
    args = parser.parse_args()
    generator = create_generator(args.generator, args.checkpoint_generator, **json.loads(args.generator_options)).to(args.device).eval()
    encoder = latent_encoder(load_latent_regressor(args.checkpoint, generator)) if args.checkpoint else None
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    refine = dataclasses.replace(REFINE, lr=args.refine_lr, noise=args.refine_noise)
    print(HEADER, file=sys.stderr)  # rows as they come (stderr), so a cut-short run still shows them
    table = encoder_table(generator, encoder, seeds, args.views, args.psi, args.k, args.steps, refine,
                          report=lambda row: print(markdown_row(row), file=sys.stderr, flush=True))  # fmt: skip
    if args.json:
        print(json.dumps({"machine": machine(), "settings": vars(args), **table}, indent=2))
    else:
        print(f"{machine()}; {args.seeds} held-out seeds from {args.seed_start}, views {args.views}, no jitter, "
              f"refine lr {refine.lr} noise {refine.noise}\n")  # fmt: skip
        print(markdown(table))


if __name__ == "__main__":
    main()
