"""python -m regress.generate: pre-generate Sample records into deterministic, resumable WebDataset shards.

Ranks (torchrun's RANK / WORLD_SIZE, or an initialized torch.distributed) take the shards i with
i % world_size == rank; a shard's seeds depend only on its index, so 1 or 8 ranks make the same
dataset. A rerun skips shards that are complete and verified and regenerates the others; the
last rank to finish (or any rerun) writes manifest.json (`regress.store.shard_set`). Meshes:
density grid, marching cubes, largest piece and the PLY layout on the generator's device
(`regress.geometry`); images are compressed in `workers` processes. The device renders the next
batches while a background thread writes this one (`regress.generation`).
`python -m regress.generate --verify DIR` checks a finished dataset.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Literal

from tqdm import tqdm

from regress.camera import ViewMixture
from regress.configs import expand_config_arguments, verify_arguments
from regress.errors import importing_for_a_worker, run_command
from regress.generation.background import consume_in_background, short_switch_interval
from regress.generation.compress import SHARDS_IN_FLIGHT, ShardCompression, ShardInFlight, compression_pool
from regress.generation.render import RenderedBatch, render_batches
from regress.generation.timing import StageClock
from regress.generators import Generator, GeneratorSpec
from regress.geometry.grids import COARSE_MARGIN, check_coarse_stride, grids_that_fit
from regress.geometry.mesh_files import MeshFormat, check_mesh_format
from regress.runtime import deterministic_kernels, load_compile_cache, own_gpu_only, pick_device, rank_and_world_size, save_compile_cache
from regress.sample import IMAGE_FORMATS, PNG_LEVEL, SCHEMA_VERSION
from regress.store.pipes import PipeCommand
from regress.store.shard_set import ShardLayout, ShardSet, shard_destination, verify_dataset

MESH_ALGORITHM = "regress.marching_cubes"  # in the settings: meshes of the earlier CPU marching cubes differ, never mix them


def generate(
    output: str | Path,
    generator: str | None = None,
    checkpoint: Path | None = None,
    generator_options: dict | None = None,
    num_samples: int = 10000,
    seed_start: int = 0,
    samples_per_shard: int = 1000,
    name: str = "synth",
    views: str | dict | None = "published",
    psi: float = 0.7,
    cutoff: int | None = None,
    jitter: bool = True,
    image_format: Literal["png", "jpg", "webp"] = "png",
    png_level: int = PNG_LEVEL,
    with_mesh: bool = False,
    mesh_resolution: int = 128,
    mesh_level: float | None = None,
    mesh_keep_largest: bool = True,
    mesh_format: MeshFormat = "ply",
    mesh_coarse_stride: int | None = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    staging: Path | None = None,
    keep_staged: bool = False,
    compile_cache: Path | None = None,
) -> dict[str, Any]:
    """Write this rank's shards of seeds [seed_start, seed_start + num_samples) to `output`; return a summary.

    Args:
        output: folder for `name-000000.tar ...`, their records and manifest.json, or `pipe:COMMAND` that
            takes each finished file on stdin, `{name}` standing for its name (e.g. `pipe:aws s3 cp - s3://b/{name}`)
        generator: backend name (`analytic`, `eg3d`); None picks eg3d with a checkpoint, else analytic
        checkpoint: generator weights file (never downloaded)
        generator_options: keyword overrides for the backend, e.g. {image_resolution: 64}
        num_samples: how many seeds, from seed_start on (10,000: ten shards, nine to train on and one to validate)
        seed_start: first seed
        samples_per_shard: seeds per shard; with seed_start it fixes every shard's seeds
        name: shard file name prefix
        views: view mixture: a short name of regress/configs/views, a YAML path or a mapping
        psi: truncation psi
        cutoff: truncation cutoff (rows of w truncated), None for all
        jitter: the renderer's per-seed training jitter
        image_format: png (lossless), jpg or webp
        png_level: zlib level 0-9 of png images; every level decodes to the same pixels, so it is no
            part of the settings a resumed set must share
        with_mesh: add a mesh (marching cubes of the density grid, `mesh_format`) to every sample
        mesh_resolution: density grid points per axis for meshes (128: a CPU-sized grid; EG3D's configs use 256)
        mesh_level: density of the surface; None takes the generator's own level
        mesh_keep_largest: keep only the largest connected piece of each mesh
        mesh_format: `mesh.ply` (binary), `mesh.obj` or `mesh.glb` (the surface), or `mesh.mrc` (the density grid itself,
            for ChimeraX, as EG3D's scripts write shapes)
        mesh_coarse_stride: None evaluates the density at every grid point; k evaluates every k-th point first, then only
            the blocks of k^3 cells the surface passes through (`geometry.grids.refine_grids`): the same meshes (all but
            pieces no such block touches, none of them the largest) from a small share of the points, as 512^3 needs;
            an mrc grid holds the coarse grid's interpolation away from the surface
        batch_size: samples per generator call
        workers: processes for image compression (0: in this process)
        device: torch device, or auto (this rank's GPU if there is one)
        progress: show a progress bar
        staging: local folder where shards are written and verified before a `pipe:` output takes them
        keep_staged: keep the staged shards once piped (their records are always kept, to resume)
        compile_cache: a file of torch.compile's caches: preloaded, or written by rank 0 when it does not
            exist yet, so a compiled generator (`compile` option) starts in seconds on a new machine
    """
    if importing_for_a_worker():  # a compression process importing a script without a guard
        raise RuntimeError('regress.generate ran while a worker process imported the calling script: put the call under if __name__ == "__main__":')
    layout = ShardLayout(name, seed_start, num_samples, samples_per_shard)
    _check_options(batch_size, workers, image_format, png_level, mesh_resolution if with_mesh else None, mesh_coarse_stride, cutoff)
    run_on = deterministic_kernels(pick_device(device))
    grids_at_once = grids_that_fit(mesh_resolution, batch_size, mesh_coarse_stride is not None, run_on) if with_mesh else batch_size
    rank, world_size = rank_and_world_size()
    mixture = ViewMixture.load(views)
    spec = GeneratorSpec(generator, checkpoint, generator_options)
    write_cache = compile_cache is not None and not load_compile_cache(compile_cache) and rank == 0
    synthesizer = spec.build(run_on)
    folder, target = shard_destination(output, staging)
    mesh = {"resolution": mesh_resolution, "keep_largest": mesh_keep_largest, "level": synthesizer.surface_level if mesh_level is None else mesh_level,
            **({"format": check_mesh_format(mesh_format)} if mesh_format != "ply" else {}),  # PLY sets keep their settings
            **({"coarse_to_fine": {"stride": mesh_coarse_stride, "margin": COARSE_MARGIN}} if mesh_coarse_stride else {})}  # fmt: skip (dense sets too)
    choices = {"psi": psi, "cutoff": cutoff, "jitter": jitter, "image_format": image_format, "batch_size": batch_size}
    settings = _settings(spec, synthesizer.box_size, mixture, layout, mesh if with_mesh else None, choices)
    shards = ShardSet(folder, layout, settings, target, keep_staged)
    with shards.claimed(rank, world_size):
        shards.check_output()
        todo, skipped = shards.plan(layout.indices_for_rank(rank, world_size))
        shards.drop_stale_manifest()
        run = _render_and_write(synthesizer, shards, todo, mixture, settings, png_level, batch_size, grids_at_once, workers, f"rank {rank}/{world_size}", progress)
        manifest = shards.write_manifest_if_complete(synthesizer.data_facts())
    if write_cache:
        save_compile_cache(compile_cache)
    summary = {"output": str(folder), "rank": rank, "world_size": world_size, "skipped": [layout.filename(i) for i in skipped], **run}
    summary["manifest"] = str(manifest) if manifest else None
    _print_summary(summary, layout)
    return summary


def _check_options(
    batch_size: int, workers: int, image_format: str, png_level: int, mesh_resolution: int | None, mesh_coarse_stride: int | None, cutoff: int | None
) -> None:
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; choose one of {IMAGE_FORMATS}")
    if not 0 <= png_level <= 9:
        raise ValueError(f"png_level is a zlib level from 0 (none) to 9 (smallest), got {png_level}")
    if mesh_resolution is not None and mesh_resolution < 2:
        raise ValueError(f"mesh_resolution must be at least 2, got {mesh_resolution}")
    check_coarse_stride(mesh_coarse_stride)
    if cutoff is not None and cutoff < 0:
        raise ValueError(f"cutoff is the number of latent layers truncated, from 0, got {cutoff}; null truncates them all")


def _settings(spec: GeneratorSpec, box_size: float, mixture: ViewMixture, layout: ShardLayout, mesh: dict | None, choices: dict) -> dict[str, Any]:
    """Everything that decides a shard's bytes: its fingerprint goes in every shard's record, it all in the manifest."""
    return {
        **spec.fingerprint(),  # generator (identity), checkpoint_sha256, generator_options
        "views": dataclasses.asdict(mixture),
        "mesh": {**mesh, "box_size": box_size, "algorithm": MESH_ALGORITHM} if mesh else None,
        "name": layout.name,
        "seed_start": layout.seed_start,
        "samples_per_shard": layout.samples_per_shard,
        "schema_version": SCHEMA_VERSION,
        **choices,  # batch_size among them: backends agree across batch sizes only up to float rounding
    }


def _render_and_write(
    generator: Generator,
    shards: ShardSet,
    todo: list[int],
    mixture: ViewMixture,
    settings: dict,
    png_level: int,
    batch_size: int,
    grids_at_once: int,
    workers: int,
    desc: str,
    progress: bool,
) -> dict[str, Any]:
    """Render the shards `todo` on this thread while a background thread compresses (in `workers` processes) and writes
    them, piping each finished one where the set says; what was written, how fast, and where the time went."""
    layout, start = shards.layout, time.perf_counter()
    samples = sum(len(layout.seeds(i)) for i in todo)
    bar = tqdm(total=samples, unit="sample", desc=desc, disable=not progress, dynamic_ncols=True)
    pool, clock = compression_pool(workers), StageClock()
    # (seconds, samples) until the first batch is rendered: compilation, cuDNN search. render_batches works one batch
    # ahead, so by then the next batch has been rendered too (on the CPU) or is under way (on a GPU): it counts as warm-up.
    warmup: list[tuple[float, int]] = []

    def write_all(batches: Iterator[RenderedBatch]) -> int:
        """Each shard's samples compressed here and handed to a writer thread of its own: SHARDS_IN_FLIGHT shards
        rendered side by side, and as many more finishing; finished shards sent on in order."""
        written, filling, finishing = 0, {}, deque()
        with ThreadPoolExecutor(2 * SHARDS_IN_FLIGHT, thread_name_prefix="regress-shard") as threads:
            try:
                for batch in batches:
                    if batch.shard not in filling:
                        while finishing and (len(filling) + len(finishing) >= 2 * SHARDS_IN_FLIGHT or finishing[0][1].future.done()):
                            written += finish(*finishing.popleft())
                        bar.set_postfix_str(layout.filename(batch.shard))
                        filling[batch.shard] = ShardCompression(shards, batch.shard, settings["image_format"], png_level, batch_size + 2 * workers, pool, threads, bar, clock)
                    filling[batch.shard].add(batch)
                    if filling[batch.shard].complete:
                        finishing.append((batch.shard, filling.pop(batch.shard).close()))
                while finishing:
                    written += finish(*finishing.popleft())
            except BaseException:
                for compression in filling.values():
                    compression.abort()
                for _, shard in finishing:
                    shard.abort()
                raise
        return written

    def finish(index: int, shard: ShardInFlight) -> int:
        with clock("write: waiting for shard writers"):
            record = shard.record(clock)
        shards.send(index, record)
        return record["bytes"]

    def rendered() -> Iterator[RenderedBatch]:
        for batch in render_batches(generator, layout, todo, mixture, settings, batch_size, grids_at_once, clock, SHARDS_IN_FLIGHT):
            if not warmup:
                warmup.append((time.perf_counter() - start, min(samples, len(batch.seeds) + batch_size)))
            yield batch

    try:
        with short_switch_interval():
            written_bytes = consume_in_background(
                write_all, rendered(), clock=clock, consumer_wait="write: waiting for renders", producer_wait="render: waiting for the writer"
            )
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - start
    return {
        "written": [layout.filename(i) for i in todo],
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else 0.0,
        "warmup_seconds": warmup[0][0] if warmup else 0.0,
        "steady_samples_per_second": (samples - warmup[0][1]) / (seconds - warmup[0][0]) if warmup and samples > warmup[0][1] else None,
        "bytes": written_bytes,
        "stage_seconds": dict(clock.seconds),
        "workers": workers,
    }


def _print_summary(summary: dict[str, Any], layout: ShardLayout) -> None:
    rank = f"rank {summary['rank']}/{summary['world_size']}"
    print(
        f"regress.generate: {rank} wrote {len(summary['written'])} shards ({summary['samples']} samples, "
        f"{summary['bytes'] / 2**20:.1f} MiB) in {summary['seconds']:.1f} s, {summary['samples_per_second']:.2f} samples/s; "
        f"{len(summary['skipped'])} complete shards kept",
        file=sys.stderr,
    )
    if summary["steady_samples_per_second"]:
        print(
            f"regress.generate: {rank} first batch after {summary['warmup_seconds']:.1f} s (compilation, warm-up), "
            f"then {summary['steady_samples_per_second']:.2f} samples/s",
            file=sys.stderr,
        )
    lines = []
    for stage, seconds in summary["stage_seconds"].items():  # shares of the wall time; the workers' of workers x wall
        share = seconds / max(summary["seconds"] * (max(summary["workers"], 1) if stage.startswith("workers") else 1), 1e-9)
        lines.append(f"  {stage:<34} {seconds:8.1f} s {100 * share:5.1f} %")
    print(f"regress.generate: {rank} time by stage (the render and write threads run side by side):", *lines, sep="\n", file=sys.stderr)
    if summary["manifest"]:
        print(f"regress.generate: {layout.num_shards} shards, {layout.num_samples} samples: {summary['manifest']}", file=sys.stderr)
    else:
        print(
            f"regress.generate: other ranks' shards are still missing in {summary['output']}; the last rank to finish "
            "writes manifest.json (or rerun the same command once they are done)",
            file=sys.stderr,
        )


def verify(root: str, progress: bool = True) -> int:
    """Check a finished dataset against its manifest, print one line per bad shard and a summary; 1 if any is bad, else 0."""
    checked, problems = verify_dataset(root, progress)
    for problem in problems:
        print(f"regress.generate: bad shard: {problem}")
    unlisted = " (shards it does not list cannot be looked for through a pipe: template)" if PipeCommand.parse(root) else ""
    verdict = f"{len(problems)} bad" if problems else "every one has its recorded size and SHA-256"
    print(f"regress.generate: verified {checked} shards of {root} against its manifest: {verdict}{unlisted}")
    return 1 if problems else 0


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line: options from YAML files (`--config`: a file, or a short name of regress/configs/generate/) and
    flags, or `--verify DIR` to check a finished dataset; errors exit 2 (usage) or 1 with one line (regress.errors)."""
    from jsonargparse import CLI

    given = sys.argv[1:] if args is None else args
    own_gpu_only()  # under torchrun: every rank on cuda:0, one compile cache for all

    def command() -> dict[str, Any]:
        expanded = expand_config_arguments(given, "generate")
        if any(arg.split("=")[0] == "--verify" for arg in expanded):
            options = verify_arguments(expanded, "python -m regress.generate", "shard folder, or pipe: template, with its manifest.json")
            raise SystemExit(verify(options.verify, options.progress))
        return CLI(generate, args=expanded, as_positional=False, exit_on_error=False, allow_abbrev=False, prog="python -m regress.generate",
                   epilog="python -m regress.generate --verify DIR checks a finished dataset instead.")  # fmt: skip

    return run_command("regress.generate", command, interrupted="interrupted; complete shards are kept: rerun the command to go on")


if __name__ == "__main__":
    main()
