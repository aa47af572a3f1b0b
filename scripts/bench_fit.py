"""Training throughput of the regressors on online synthesis: fit steps/s and samples/s.

    python scripts/bench_fit.py                                   # CPU, both models, resnet18 at 128
    python scripts/bench_fit.py --device cuda --batch-size 64 --precision bf16-mixed
    python scripts/bench_fit.py --device cuda --generator eg3d --models depth --encoder resnet50 --image-size 512 \
        --batch-size 32 --precision bf16-mixed --generator-options '{"render_precision": "float16", "compile": "reduce-overhead"}'

Runs the real Lightning fit loop (SynthOnlineDataModule + DepthRegressor / LatentRegressor) and
times steps after a warm-up; then the same loop on batches rendered once and handed out again
(training alone), and synthesis alone on as many batches. Prints one Markdown table row per model:
wall-clock figures, online samples/s against the serial bound 1 / (1/synthesis + 1/training) (the
loop renders, then steps; with --reuse k synthesis counts 1/k per step), and CPU-seconds of this
process per step (on a shared machine the wall figures drop, the CPU figure much less).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import lightning as L
import torch

from regress.datamodules import SynthOnlineDataModule
from regress.models import DepthRegressor, LatentRegressor
from regress.runtime import synchronize

from bench_synthesis import machine  # scripts/ is on sys.path when this runs as a script

MODELS = {"depth": DepthRegressor, "latent": LatentRegressor}


class StepClock(L.Callback):
    """Wall and process times at the end of every training step (after the device finished)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


class CachedSynthesis(SynthOnlineDataModule):
    """Online data that renders its first `cache` batches and then hands them out again: the training step alone."""

    def __init__(self, cache: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache, self._batches, self._served = cache, [], 0

    def synthesize(self, batch: dict[str, torch.Tensor]) -> dict:
        if len(self._batches) < self.cache:
            self._batches.append(super().synthesize(batch))
            return self._batches[-1]
        self._served += 1
        return self._batches[self._served % self.cache]



def synthesis_seconds(data: SynthOnlineDataModule, device: torch.device, batches: int) -> float:
    """Wall seconds per rendered batch of on-device synthesis alone (after one warm-up batch; repeats skipped)."""
    loader = iter(data.train_dataloader())
    moved = [{k: v.to(device) for k, v in batch.items()} for batch in itertools.islice(loader, 0, (batches + 1) * data.reuse, data.reuse)]
    data.synthesize(moved[0])
    synchronize(device)
    start = time.perf_counter()
    for batch in moved[1:]:
        data.synthesize(batch)
    synchronize(device)
    return (time.perf_counter() - start) / max(len(moved) - 1, 1)


def fit_seconds(
    name: str, args: argparse.Namespace, cached: bool, callbacks: tuple[L.Callback, ...] = ()
) -> tuple[float, float, SynthOnlineDataModule, torch.device]:
    """Wall and CPU seconds per timed training step, online or on cached batches (the first `warmup` steps render
    them), with the given callbacks beside the step clock."""
    L.seed_everything(0, verbose=False)
    options = dict(
        generator=args.generator, checkpoint=args.checkpoint, generator_options=args.generator_options,
        epoch_length=args.batch_size * (args.steps + args.warmup), batch_size=args.batch_size, val_size=0,
        image_size=args.image_size, num_workers=args.num_workers, reuse=args.reuse,
    )  # fmt: skip
    data = CachedSynthesis(args.warmup, **options) if cached else SynthOnlineDataModule(**options)
    linked = {"latent_space": data.latent_space} if MODELS[name] is LatentRegressor else {}  # as python -m regress.fit links it
    model = MODELS[name](encoder=args.encoder, image_size=data.image_size, **linked)
    clock = StepClock()
    trainer = L.Trainer(
        accelerator=args.device, devices=1, precision=args.precision, max_epochs=1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[*callbacks, clock],
    )  # fmt: skip
    trainer.fit(model, data)
    steps = len(clock.wall) - args.warmup
    wall = (clock.wall[-1] - clock.wall[args.warmup - 1]) / steps
    cpu = (clock.cpu[-1] - clock.cpu[args.warmup - 1]) / steps
    return wall, cpu, data, trainer.strategy.root_device  # the model itself is back on the CPU after fit


def bench(name: str, args: argparse.Namespace) -> dict:
    wall, cpu, data, device = fit_seconds(name, args, cached=False)
    synthesis = synthesis_seconds(data, device, min(args.steps, 8))
    cached, _, _, _ = fit_seconds(name, args, cached=True)
    return {"model": name, "step_s": wall, "cpu_s": cpu, "synthesis_s": synthesis, "cached_s": cached}


def arguments(description: str) -> argparse.ArgumentParser:
    """The options of a fit benchmark: device, models, backbone, sizes, steps, precision, generator."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--encoder", default="resnet18", help="the regressors' timm backbone (their encoder option)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--reuse", type=int, default=1, help="train on each rendered batch this many steps (SynthOnlineDataModule reuse)")
    parser.add_argument("--generator", default=None, help="backend name; default: eg3d with --checkpoint, else analytic")
    parser.add_argument("--checkpoint", default=None, help="the generator's weights (eg3d)")
    parser.add_argument("--generator-options", type=json.loads, default={"image_resolution": 128},
                        help="JSON backend options (default: the CPU demo's analytic head); null for none")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main() -> None:
    parser = arguments(__doc__)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else f"{machine()}, {torch.get_num_threads()} threads"
    print(f"# fit throughput: {hardware}, torch {torch.__version__}, encoder {args.encoder}, image {args.image_size}, "
          f"batch {args.batch_size}, reuse {args.reuse}, precision {args.precision}, generator options {args.generator_options}\n")  # fmt: skip
    print("| model | steps/s | samples/s | synthesis alone, samples/s | training alone (cached), samples/s | "
          "online / serial bound | s/step | synthesis share | CPU-s/step |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        r = bench(name, args)
        bound = args.batch_size / (r["synthesis_s"] / args.reuse + r["cached_s"])
        print(f"| {r['model']} | {1 / r['step_s']:.2f} | {args.batch_size / r['step_s']:.1f} | {args.batch_size / r['synthesis_s']:.1f} | "
              f"{args.batch_size / r['cached_s']:.1f} | {args.batch_size / r['step_s'] / bound:.0%} | {r['step_s']:.3f} | "
              f"{r['synthesis_s'] / args.reuse / r['step_s']:.0%} | {r['cpu_s']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
