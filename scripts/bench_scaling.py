"""Scaling from 1 to N GPUs of one machine: shard generation (with and without meshes) and online training.

Each run is a real `torchrun` job: `regress.generate.generate` on every rank, or a Lightning DDP fit of the
depth regressor on online synthesis (batch-norm synchronized or not, as configs/trainer/ddp.yaml says).
Every rank writes its figures to a JSON file; this launcher adds them up and prints one Markdown table:
warm-up (first batch: compilation) apart from the steady rate, the steady share of the run, the speed-up
over one GPU, and whether any seed was rendered twice across ranks; then each fit rank's step times.

Before the timed runs of a job, a short priming run compiles what the job needs; its
warm-up is the cold start, and the timed runs are warm second runs. With `--compile-cache`, the priming
run writes the file and every generation run starts from an empty inductor folder and that file, as a new
machine would: the warm-up of the run on N GPUs then says whether every rank found its kernels there.

    python scripts/bench_scaling.py --gpus 1 2 --jobs plain mesh fit                    # EG3D, random full-size weights
    python scripts/bench_scaling.py --gpus 1 2 --jobs fit --fit-steps 300 --checkpoint ffhq512-128.pkl
    python scripts/bench_scaling.py --gpus 1 2 --jobs plain --num-samples 20000 --weak-scaling --compile-cache cc.bin
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from regress import configs
from regress.runtime import own_gpu_only, pick_device, rank_and_world_size

FAST_PATH = '{"render_precision": "float16", "compile": "reduce-overhead"}'


def job_cache(args: argparse.Namespace) -> Path | None:
    """This job's compile cache file (`cc.bin` -> `cc-mesh.bin`): each job's priming run writes what that job compiles."""
    if args.compile_cache is None:
        return None
    path = Path(args.compile_cache)
    return path.with_name(f"{path.stem}-{args.job}{path.suffix}")


def generate_worker(args: argparse.Namespace, out: Path) -> dict:
    """One rank of `regress.generate`: its summary, the seeds of its shards, and the shard layout."""
    from regress.generate import generate
    from regress.store.shard_set import ShardLayout

    summary = generate(
        out / "shards", generator=args.generator, checkpoint=args.checkpoint, generator_options=json.loads(args.generator_options),
        num_samples=args.num_samples, samples_per_shard=args.samples_per_shard, with_mesh=args.job == "mesh",
        mesh_resolution=args.mesh_resolution, mesh_level=args.mesh_level, batch_size=args.batch_size,
        workers=args.workers, progress=False, compile_cache=job_cache(args),
    )  # fmt: skip
    layout = ShardLayout("synth", 0, args.num_samples, args.samples_per_shard)  # generate's defaults: name synth, seeds from 0
    index = {layout.filename(i): i for i in range(layout.num_shards)}
    seeds = [seed for name in summary["written"] for seed in layout.seeds(index[name])]
    steady_seconds = summary["seconds"] - summary["warmup_seconds"]
    return {
        "samples": summary["samples"], "seconds": summary["seconds"], "warmup_seconds": summary["warmup_seconds"],
        "steady_samples": round((summary["steady_samples_per_second"] or 0) * steady_seconds), "steady_seconds": steady_seconds,
        "stage_seconds": summary["stage_seconds"], "seeds": seeds,
    }  # fmt: skip


def fit_worker(args: argparse.Namespace, out: Path) -> dict:
    """One rank of a DDP fit on online EG3D synthesis: step times after the warm-up, and the seeds it trained on."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    from regress.datamodules import SynthOnlineDataModule
    from regress.models import DepthRegressor

    from bench_fit import StepClock  # scripts/ is on sys.path when this runs as a script

    class Clock(StepClock):
        """Step times, and the seed of every sample this rank trained on."""

        def __init__(self) -> None:
            super().__init__()
            self.seeds: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self.seeds += [int(m["seed"]) for m in batch["meta"]]

    _, world_size = rank_and_world_size()
    strategy = DDPStrategy(**json.loads(args.ddp_options)) if world_size > 1 else "auto"
    steps = args.fit_steps + args.fit_warmup
    L.seed_everything(0, verbose=False)
    data = SynthOnlineDataModule(
        generator=args.generator, checkpoint=args.checkpoint, generator_options=json.loads(args.generator_options),
        epoch_length=args.batch_size * world_size * steps, batch_size=args.batch_size, val_size=0,
        image_size=args.image_size, num_workers=2,
    )  # fmt: skip
    clock = Clock()
    start = time.perf_counter()
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=world_size, strategy=strategy, precision="bf16-mixed",
        sync_batchnorm=args.sync_batchnorm and world_size > 1,
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(DepthRegressor(encoder=args.encoder), data)
    warm = clock.wall[args.fit_warmup - 1]
    steps_ms = sorted(1000 * (b - a) for a, b in zip(clock.wall[args.fit_warmup - 1 :], clock.wall[args.fit_warmup :]))
    return {
        "samples": len(clock.seeds), "seconds": clock.wall[-1] - start, "warmup_seconds": warm - start,
        "steady_samples": args.batch_size * (len(clock.wall) - args.fit_warmup), "steady_seconds": clock.wall[-1] - warm,
        "seeds": clock.seeds, "step_ms": [steps_ms[len(steps_ms) // 2], steps_ms[len(steps_ms) * 9 // 10], steps_ms[-1]],
    }  # fmt: skip


def shipped_ddp() -> dict:
    """The trainer settings of the shipped DDP config (`--config ddp`), which the fit runs follow."""
    return yaml.safe_load(configs.shipped("trainer", "ddp").read_text())["trainer"]


def surface_level(args: argparse.Namespace) -> float:
    """The generator's surface level, or where its random weights have no surface there, a density quantile."""
    from regress.camera import ViewMixture
    from regress.generators import GeneratorSpec
    from regress.geometry.grids import density_grid

    from bench_generate import mesh_level  # scripts/ is on sys.path when this runs as a script

    device = pick_device()
    generator = GeneratorSpec(args.generator, args.checkpoint).create().to(device)  # generate's random weights; its own instance, freed below
    with torch.inference_mode():
        grids = density_grid(generator, generator.sample([0], ViewMixture.load("published"))["w"], args.mesh_resolution)
    level = mesh_level(generator, grids, args.level_quantile)
    del generator, grids
    torch.cuda.empty_cache()
    return level


def run(args: argparse.Namespace, gpus: int, out: Path, samples: int, steps: int) -> list[dict]:
    """Launch one job on `gpus` GPUs with torchrun (`samples` to generate, or `steps` per rank to train);
    the ranks' JSON figures. What the run wrote is deleted afterwards: meshed runs fill a disk."""
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", __file__, *sys.argv[1:],
               "--worker", "--job", args.job, "--out", str(out), "--num-samples", str(samples), "--fit-steps", str(steps)]  # fmt: skip
    env = dict(os.environ)
    if args.compile_cache and args.job != "fit":  # a new machine: nothing compiled but what the file holds
        env["TORCHINDUCTOR_CACHE_DIR"] = str(out / "inductor")
    try:
        subprocess.run(command, check=True, env=env)
        return [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def combine(ranks: list[dict]) -> dict:
    """Figures of a whole job: ranks run side by side, so rates add up and the slowest rank's time counts."""
    seeds = [seed for r in ranks for seed in r["seeds"]]
    steady_rate = sum(r["steady_samples"] / r["steady_seconds"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    warmup = max(r["warmup_seconds"] for r in ranks)
    return {
        "samples": sum(r["samples"] for r in ranks), "seconds": seconds, "warmup_seconds": warmup,
        "steady_rate": steady_rate, "steady_share": (seconds - warmup) / seconds,
        "duplicated_seeds": len(seeds) - len(set(seeds)), "step_ms": [r["step_ms"] for r in ranks if "step_ms" in r],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", nargs="+", choices=("plain", "mesh", "fit"), default=["plain", "mesh", "fit"])
    parser.add_argument("--generator", default="eg3d")
    parser.add_argument("--checkpoint", default=None, help="generator weights; default: random full-size weights")
    parser.add_argument("--generator-options", default=FAST_PATH, help="JSON backend options")
    parser.add_argument("--num-samples", type=int, default=4096, help="samples per generation run (per GPU with --weak-scaling)")
    parser.add_argument("--weak-scaling", action="store_true", help="generation on N GPUs renders N times --num-samples, so every run lasts about as long")
    parser.add_argument("--samples-per-shard", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank, generation and training")
    parser.add_argument("--workers", type=int, default=7, help="compression processes per rank")
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument("--mesh-level", type=float, default=None, help="iso-level (random weights have no surface at the default)")
    parser.add_argument("--level-quantile", type=float, default=0.8, help="mesh level quantile where the generator has no surface")
    parser.add_argument("--encoder", default="resnet50", help="the regressor's timm backbone (its encoder option)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--fit-steps", type=int, default=200, help="timed training steps per rank, after the warm-up")
    parser.add_argument("--fit-warmup", type=int, default=5)
    parser.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=shipped_ddp().get("sync_batchnorm", False),
                        help="fit on 2+ GPUs: batch-norm statistics over all ranks (default: as configs/trainer/ddp.yaml, else Lightning's off)")  # fmt: skip
    parser.add_argument("--ddp-options", default="{}", help='fit on 2+ GPUs: JSON keyword arguments of DDPStrategy, e.g. {"broadcast_buffers": false}')
    parser.add_argument("--prime", action=argparse.BooleanOptionalAction, default=True, help="a short untimed run of each job first: its warm-up is the cold start")
    parser.add_argument("--compile-cache", default=None, help="generation runs: a compile cache file, written by the priming run; every run starts from it and an empty inductor folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.job != "fit":
            own_gpu_only()  # as python -m regress.generate does: every rank on cuda:0
        if torch.cuda.is_available():
            torch.cuda.set_device(pick_device())
        figures = (fit_worker if args.job == "fit" else generate_worker)(args, args.out)
        (args.out / f"rank-{rank_and_world_size()[0]}.json").write_text(json.dumps(figures))
        return

    if "mesh" in args.jobs and args.mesh_level is None:
        args.mesh_level = surface_level(args)
        sys.argv += ["--mesh-level", repr(args.mesh_level)]  # the workers mesh at the same level
        print(f"mesh level {args.mesh_level:.4g}", flush=True)
    root, rows, cold = Path(tempfile.mkdtemp(prefix="bench-scaling-")), [], {}
    try:
        for job in args.jobs:
            args.job = job
            if args.prime:  # two batches (generation: one rank's compilation fits all) or the warm-up steps (training: each rank's GPU)
                gpus = max(args.gpus) if job == "fit" else min(args.gpus)
                cold[job] = combine(run(args, gpus, root / f"{job}-prime", 2 * args.batch_size * gpus, 1))["warmup_seconds"]
                print(json.dumps({"job": job, "gpus": gpus, "cold_warmup_seconds": cold[job]}), flush=True)
            for gpus in args.gpus:
                samples = args.num_samples * (gpus if args.weak_scaling else 1)
                row = {"job": job, "gpus": gpus, **combine(run(args, gpus, root / f"{job}-{gpus}", samples, args.fit_steps))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{hardware} x {max(args.gpus)}, torch {torch.__version__}, {args.generator} "
          f"{args.checkpoint or 'random full-size weights'}, options {args.generator_options}, batch {args.batch_size} per rank"
          + (f"; fit: sync_batchnorm {args.sync_batchnorm}, DDP options {args.ddp_options}" if "fit" in args.jobs else "") + "\n")  # fmt: skip
    print("| job | GPUs | samples | warm-up s | run s | steady share | steady samples/s | speed-up | seeds rendered twice |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        one = next((r for r in rows if r["job"] == row["job"] and r["gpus"] == 1), None)
        speedup = f"{row['steady_rate'] / one['steady_rate']:.2f}x" if one else "-"
        print(f"| {row['job']} | {row['gpus']} | {row['samples']} | {row['warmup_seconds']:.1f} | {row['seconds']:.1f} | "
              f"{row['steady_share']:.0%} | {row['steady_rate']:.1f} | {speedup} | {row['duplicated_seeds']} |")  # fmt: skip
    for row in rows:
        if row["step_ms"]:  # a rank that waits for the other at every step shows it in its slow steps, not its median
            ranks = "; ".join(f"rank {i}: {m:.1f} / {p:.1f} / {x:.1f}" for i, (m, p, x) in enumerate(row["step_ms"]))
            print(f"\n{row['job']} on {row['gpus']} GPU(s), step ms median / p90 / max: {ranks}")
    for job, seconds in cold.items():
        caches = "an empty inductor folder" if args.compile_cache and job != "fit" else "this machine's caches"
        print(f"\ncold start of {job} (priming run, {caches}): {seconds:.1f} s to the first batch")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cold_warmup_seconds": cold}, indent=1))


if __name__ == "__main__":
    main()
