"""What `FiniteGuard` (the fit job's non-finite check, on by default) costs a training step.

    python scripts/bench_finite_guard.py --device cuda --batch-size 64 --precision bf16-mixed
    python scripts/bench_finite_guard.py --device cuda --encoder resnet50 --image-size 512 --batch-size 32 --precision bf16-mixed

The training step alone (batches rendered once and handed out again, as `bench_fit.py`'s cached run), with and
without the guard, alternating `--repeats` times; prints the median milliseconds a step of each and the difference.
"""

from __future__ import annotations

import statistics

import torch

from bench_fit import arguments, fit_seconds  # scripts/ is on sys.path when this runs as a script
from regress.training.callbacks import FiniteGuard


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="runs with and without the guard, alternating")
    args = parser.parse_args()
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    for name in args.models:
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.repeats):
            times["without"].append(fit_seconds(name, args, cached=True)[0])
            times["with"].append(fit_seconds(name, args, cached=True, callbacks=(FiniteGuard(),))[0])
        without, with_guard = (1e3 * statistics.median(times[k]) for k in ("without", "with"))
        print(f"{hardware}, {name}, encoder {args.encoder}, image {args.image_size}, batch {args.batch_size}, {args.precision}: "
              f"{without:.2f} ms a step without the guard, {with_guard:.2f} with: {with_guard - without:+.2f} ms "
              f"({(with_guard - without) / without:+.1%}); runs {[round(1e3 * t, 2) for t in times['without']]} / "
              f"{[round(1e3 * t, 2) for t in times['with']]}")  # fmt: skip


if __name__ == "__main__":
    main()
