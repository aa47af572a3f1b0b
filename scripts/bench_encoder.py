"""The latent regressor as an inversion encoder, against projection, on held-out seeds (regress.evaluation.encoder_table).

    python scripts/bench_encoder.py --latent_checkpoint data/runs/default/checkpoints/last.ckpt
    python scripts/bench_encoder.py --latent_checkpoint latent.ckpt --seeds 32 --k 5 10 20 40 --steps 200 --json
    python scripts/bench_encoder.py --checkpoint ffhq.pkl --latent_checkpoint latent.ckpt   # eg3d, its weights

Options name what the jobs name (python -m regress.evaluate benchmark): `--checkpoint` is the generator's
weights, `--latent_checkpoint` the regressor. The last release's `--checkpoint-generator` and
`--generator-options` still work for one release, with a note on stderr; a regressor checkpoint given as
`--checkpoint` (its old meaning here) is refused with a line that says to give it as `--latent_checkpoint`.

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
import zipfile
from pathlib import Path

import torch

from regress.evaluation.encoder import latent_encoder, load_latent_regressor
from regress.evaluation.encoder_table import HEADER, HELD_OUT_START, encoder_table, markdown, markdown_row
from regress.generators import GeneratorSpec
from regress.inversion.project import REFINE

from bench_synthesis import machine  # scripts/ is on sys.path when this runs as a script

ANALYTIC_OPTIONS = {"image_resolution": 128}  # the analytic head's CPU demo size, when --generator_options is not given


class OldSpelling(argparse.Action):
    """A flag as the last release spelled it: sets the new flag's value and says so in one line on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string: str | None = None) -> None:
        print(f"bench_encoder.py: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def holds_regressor(path: str) -> bool:
    """Whether `path` is a Lightning regressor checkpoint (what --checkpoint meant here before it named the generator's
    weights): a .ckpt, or a torch file with `hyper_parameters`. EG3D weights are a plain pickle or a folder, never a zip."""
    file = Path(path)
    if file.suffix == ".ckpt":
        return True
    if not file.is_file() or not zipfile.is_zipfile(file):
        return False
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file it can read: the generator's loader says what it is
        return False
    return isinstance(saved, dict) and "hyper_parameters" in saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent_checkpoint", help="a LatentRegressor checkpoint (python -m regress.fit --model latent); without it only projection")
    parser.add_argument("--seeds", type=int, default=16, help="held-out seeds, all methods on the same ones")
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_START)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 40], help="projection steps after the regressor (and from the mean latent)")
    parser.add_argument("--steps", type=int, default=200, help="projection steps from the mean latent that the regressor's start should reach")
    parser.add_argument("--refine-lr", type=float, default=REFINE.lr, help="peak learning rate of the projection from the regressor's w")
    parser.add_argument("--refine-noise", type=float, default=REFINE.noise, help="its latent noise, a fraction of the prior's spread")
    parser.add_argument("--views", default="published", help="view mixture the held-out cameras are drawn from")
    parser.add_argument("--psi", type=float, default=0.7)
    parser.add_argument("--generator", default=None, help="generator backend (analytic, eg3d); default: eg3d with --checkpoint, else analytic")
    parser.add_argument("--checkpoint", help="the generator's weights (eg3d: the upstream .pkl or a converted folder)")
    parser.add_argument("--generator_options", help=f"generator options (JSON); default: {json.dumps(ANALYTIC_OPTIONS)} for analytic, {{}} otherwise")
    parser.add_argument("--checkpoint-generator", dest="checkpoint", action=OldSpelling, new="--checkpoint")
    parser.add_argument("--generator-options", dest="generator_options", action=OldSpelling, new="--generator_options")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the table as JSON instead of Markdown")
    args = parser.parse_args()
    if args.checkpoint is not None and holds_regressor(args.checkpoint):
        parser.exit(2, f"bench_encoder.py: error: --checkpoint {args.checkpoint} is a regressor checkpoint, but --checkpoint now "
                       f"names the generator's weights: give it as --latent_checkpoint {args.checkpoint}\n")  # fmt: skip
    try:
        options = json.loads(args.generator_options) if args.generator_options is not None else None
    except json.JSONDecodeError as error:
        parser.exit(2, f"bench_encoder.py: error: --generator_options {args.generator_options} is not JSON ({error})\n")
    try:
        spec = GeneratorSpec(args.generator, args.checkpoint, options)
        if options is None and spec.name == "analytic":
            spec = GeneratorSpec("analytic", options=ANALYTIC_OPTIONS)
        generator = spec.build(args.device)
        encoder = latent_encoder(load_latent_regressor(args.latent_checkpoint, generator)) if args.latent_checkpoint else None
    except (OSError, ValueError) as error:  # a wrong name, option or file: one line that says which (the jobs' rule: 1)
        parser.exit(1, f"bench_encoder.py: error: {error}\n")
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
