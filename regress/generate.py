"""python -m regress.generate: pre-generate Sample records into deterministic, resumable WebDataset shards.

Ranks (torchrun's RANK / WORLD_SIZE, or an initialized torch.distributed) take the shards i with
i % world_size == rank; a shard's seeds depend only on its index, so 1 or 8 ranks make the same
dataset. A rerun skips shards that are complete and verified and regenerates the others; the
last rank to finish (or any rerun) writes manifest.json. Meshes: density grid, marching cubes,
largest piece and the PLY layout on the generator's device (`regress.marching_cubes`); images
are compressed in `workers` processes. The device renders the next batches while a background
thread writes this one. `python -m regress.generate --verify DIR` checks a finished dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, TypeVar

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from regress.camera import ViewMixture
from regress.configs import expand_config_arguments
from regress.generators import create_generator
from regress.generators.base import Generator
from regress.pipes import PipeCommand
from regress.geometry import check_grid_fits, density_grid, grids_to_ply
from regress.sample import ARRAY_FIELDS, IMAGE_FORMATS, SCHEMA_VERSION, encode_sample
from regress.timing import StageClock, timed_call
from regress.shards import (
    FORMAT,
    MANIFEST,
    PARTIAL,
    ShardLayout,
    ShardWriter,
    file_sha256,
    read_record,
    record_path,
    sample_key,
    shard_is_complete,
    verify_dataset,
    write_json,
)


def record_members(arrays: dict[str, np.ndarray], meta: dict, image_format: str) -> dict[str, bytes]:
    """One sample's Sample encoding (images compressed): the work of the encoding processes."""
    return encode_sample({**{k: torch.from_numpy(v)[None] for k, v in arrays.items()}, "meta": [meta]}, 0, image_format)


def with_mesh(members: dict[str, bytes], mesh: bytes | memoryview | None) -> dict[str, bytes | memoryview]:
    """A sample's shard members: its encoding, `mesh.ply` when it has one, `meta.json` last."""
    members = dict(members)
    meta_json = members.pop("meta.json")
    return {**members, **({"mesh.ply": mesh} if mesh is not None else {}), "meta.json": meta_json}


@dataclasses.dataclass
class RenderedBatch:
    """One generator call's records, on the CPU: its shard, seeds, arrays (N, ...), meta and PLY meshes."""

    shard: int
    seeds: range
    arrays: dict[str, np.ndarray]
    meta: list[dict]
    meshes: list[memoryview | None]


def render_batches(
    model: Generator, layout: ShardLayout, shards: list[int], mixture: ViewMixture, settings: dict, batch_size: int, clock: StageClock
) -> Iterator[RenderedBatch]:
    """Every batch of the given shards in order; meshes are marched and laid out as PLY files on the device."""
    mesh = settings["mesh"]
    for index in shards:
        seeds = layout.seeds(index)
        for first in range(0, len(seeds), batch_size):
            batch_seeds = seeds[first : first + batch_size]
            with torch.inference_mode():
                with clock("render: sample"):
                    batch = model.sample(batch_seeds, mixture, psi=settings["psi"], cutoff=settings["cutoff"], jitter=settings["jitter"])
                meshes: list[memoryview | None] = [None] * len(batch_seeds)
                if mesh:
                    with clock("render: density grids"):
                        grids = density_grid(model, batch["w"], mesh["resolution"])
                    with clock("render: meshes (march, piece, PLY)"):
                        meshes = grids_to_ply(grids, mesh["level"], mesh["box_size"], mesh["keep_largest"])
                    del grids
                with clock("render: arrays to CPU"):
                    arrays = {k: batch[k].cpu().numpy() for k in ARRAY_FIELDS if k in batch}
            yield RenderedBatch(index, batch_seeds, arrays, batch["meta"], meshes)


Item, Result = TypeVar("Item"), TypeVar("Result")
_END = object()


def consume_in_background(
    consume: Callable[[Iterator[Item]], Result], items: Iterable[Item], depth: int = 2, clock: StageClock | None = None
) -> Result:
    """`consume(iterator over items)` in a background thread while this thread produces `items`, up to
    `depth` ahead; returns its result. Errors of either side are raised here, after both have stopped.
    The clock, if given, counts the time either side waits for the other.

    The producer stays on the calling thread: CUDA graphs (torch.compile's reduce-overhead) live there.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    clock = clock or StageClock()

    def drain() -> Iterator[Item]:
        while True:
            try:
                with clock("write: waiting for renders"):
                    item = ready.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    raise RuntimeError("the producer stopped early") from None
                continue
            if item is _END:
                return
            yield item

    def run() -> None:
        try:
            outcome["result"] = consume(drain())
        except BaseException as error:  # raised on the calling thread
            outcome["error"] = error
        finally:
            stop.set()

    thread = threading.Thread(target=run, name="regress-write", daemon=True)
    thread.start()
    try:
        for item in itertools.chain(items, [_END]):
            while not stop.is_set():
                try:
                    with clock("render: waiting for the writer"):
                        ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                break
    finally:
        stop.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def generate(
    output: str | Path,
    generator: str | None = None,
    checkpoint: Path | None = None,
    generator_options: dict | None = None,
    num_samples: int = 1000,
    seed_start: int = 0,
    samples_per_shard: int = 1000,
    name: str = "synth",
    views: str | dict | None = "published",
    psi: float = 0.7,
    cutoff: int | None = None,
    jitter: bool = True,
    image_format: Literal["png", "jpg", "webp"] = "png",
    with_mesh: bool = False,
    mesh_resolution: int = 256,
    mesh_level: float | None = None,
    mesh_keep_largest: bool = True,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    staging: Path | None = None,
    keep_staged: bool = False,
) -> dict[str, Any]:
    """Write this rank's shards of seeds [seed_start, seed_start + num_samples) to `output`; return a summary.

    Args:
        output: folder for `name-000000.tar ...`, their records and manifest.json, or `pipe:COMMAND` that
            takes each finished file on stdin, `{name}` standing for its name (e.g. `pipe:aws s3 cp - s3://b/{name}`)
        generator: backend name (`analytic`, `eg3d`); None picks eg3d with a checkpoint, else analytic
        checkpoint: generator weights file (never downloaded)
        generator_options: keyword overrides for the backend, e.g. {image_resolution: 64}
        num_samples: how many seeds, from seed_start on
        seed_start: first seed
        samples_per_shard: seeds per shard; with seed_start it fixes every shard's seeds
        name: shard file name prefix
        views: view mixture: a short name of regress/configs/views, a YAML path or a mapping
        psi: truncation psi
        cutoff: truncation cutoff (rows of w truncated), None for all
        jitter: the renderer's per-seed training jitter
        image_format: png (lossless), jpg or webp
        with_mesh: add `mesh.ply` (marching cubes of the density grid) to every sample
        mesh_resolution: density grid points per axis for meshes
        mesh_level: density of the surface; None takes the generator's own level
        mesh_keep_largest: keep only the largest connected piece of each mesh
        batch_size: samples per generator call
        workers: processes for image compression (0: in this process)
        device: torch device, or auto (this rank's GPU if there is one)
        progress: show a progress bar
        staging: local folder where shards are written and verified before a `pipe:` output takes them
        keep_staged: keep the staged shards once piped (their records are always kept, to resume)
    """
    layout = ShardLayout(name, seed_start, num_samples, samples_per_shard)
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; choose one of {IMAGE_FORMATS}")
    max_pending = batch_size + 2 * workers
    target_device = deterministic_kernels(_device(device))
    if with_mesh:
        if mesh_resolution < 2:
            raise ValueError(f"mesh_resolution must be at least 2, got {mesh_resolution}")
        check_grid_fits(mesh_resolution, grids_in_flight=batch_size, device=target_device)
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}; check the RANK and WORLD_SIZE variables")
    mixture = ViewMixture.load(views)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # backends without a checkpoint draw random weights: the same ones on every rerun and rank
        model = create_generator(generator, checkpoint, **(generator_options or {}))
    model.to(target_device).eval()
    target = PipeCommand.parse(output)
    if target is not None and staging is None:
        raise ValueError("a pipe: output needs a local --staging folder, where shards are written and verified before they are piped")
    output = _prepare_output(Path(staging if target is not None else output))

    identity = model.identity()
    settings = {
        "generator": identity,
        "checkpoint_sha256": checkpoint_sha256(Path(checkpoint)) if checkpoint is not None else None,
        "generator_options": generator_options or {},
        "views": dataclasses.asdict(mixture),
        "psi": psi,
        "cutoff": cutoff,
        "jitter": jitter,
        "image_format": image_format,
        "mesh": {
            "resolution": mesh_resolution,
            "keep_largest": mesh_keep_largest,
            "level": model.surface_level if mesh_level is None else mesh_level,
            "box_size": model.box_size,
            "algorithm": "regress.marching_cubes",  # meshes of the earlier CPU marching cubes differ: never mix them
        }
        if with_mesh
        else None,
        "name": name,
        "seed_start": seed_start,
        "samples_per_shard": samples_per_shard,
        "batch_size": batch_size,  # backends agree across batch sizes only up to float rounding
        "schema_version": SCHEMA_VERSION,
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    todo, skipped = _plan(output, layout, layout.indices_for_rank(rank, world_size), fingerprint, target, keep_staged)
    _drop_stale_manifest(output, layout)

    start = time.perf_counter()
    bar = tqdm(total=sum(len(layout.seeds(i)) for i in todo), unit="sample", desc=f"rank {rank}/{world_size}", disable=not progress, dynamic_ncols=True)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers else None
    for _ in range(workers):  # each submission starts a process: they start (import torch) while the first batch compiles
        pool.submit(int)

    def write_shards(batches: Iterator[RenderedBatch]) -> int:
        written = 0
        for index in todo:
            bar.set_postfix_str(layout.filename(index))
            record = _write_shard(output, layout, index, batches, settings, fingerprint, max_pending, pool, bar, clock)
            if target is not None:
                _send(output / layout.filename(index), record, target, keep_staged)
            written += record["bytes"]
        return written

    clock = StageClock()
    warmup: list[tuple[float, int]] = []  # (seconds, samples) until the first batch is rendered: compilation, cuDNN search

    def rendered() -> Iterator[RenderedBatch]:
        for batch in render_batches(model, layout, todo, mixture, settings, batch_size, clock):
            if not warmup:
                warmup.append((time.perf_counter() - start, len(batch.seeds)))
            yield batch

    try:  # the device renders the next batches while a thread encodes and writes
        written_bytes = consume_in_background(write_shards, rendered(), clock=clock)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - start

    manifest = _write_manifest_if_complete(output, layout, model, settings, fingerprint, target)
    samples = sum(len(layout.seeds(i)) for i in todo)
    summary = {
        "output": str(output),
        "rank": rank,
        "world_size": world_size,
        "written": [layout.filename(i) for i in todo],
        "skipped": [layout.filename(i) for i in skipped],
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else 0.0,
        "warmup_seconds": warmup[0][0] if warmup else 0.0,
        "steady_samples_per_second": (samples - warmup[0][1]) / (seconds - warmup[0][0]) if warmup and samples > warmup[0][1] else None,
        "bytes": written_bytes,
        "stage_seconds": dict(clock.seconds),
        "workers": workers,
        "manifest": str(manifest) if manifest else None,
    }
    _print_summary(summary, layout)
    return summary


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of a converted checkpoint folder (its files' names and hashes)."""
    if path.is_file():
        return file_sha256(path)
    lines = "".join(f"{p.relative_to(path)}:{file_sha256(p)}\n" for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


def _device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def deterministic_kernels(device: torch.device) -> torch.device:
    """Ask CUDA for deterministic kernels (cuDNN, cuBLAS), so a rerun writes the same bytes."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def _prepare_output(output: Path) -> Path:
    """Create the output folder and prove it takes files, or say clearly that it cannot."""
    probe = output / f".write-probe-{os.getpid()}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(error.errno, f"output folder {output} is not writable ({error.strerror or error}); choose another output folder or fix its permissions") from error
    return output


def _plan(
    output: Path, layout: ShardLayout, mine: range, fingerprint: str, target: PipeCommand | None = None, keep_staged: bool = False
) -> tuple[list[int], list[int]]:
    """Split this rank's shards into those to (re)generate and those complete and verified (and, for a
    pipe: output, taken by its command: complete ones not yet taken are sent now); drop stale partial files."""
    todo, skipped = [], []
    for index in mine:
        shard = output / layout.filename(index)
        shard.with_name(shard.name + PARTIAL).unlink(missing_ok=True)
        record = read_record(shard)
        if record is not None and record.get("fingerprint") != fingerprint and (shard.is_file() or record.get("sent_to")):
            raise ValueError(
                f"{shard} was generated with other settings than this run's; use a new output folder, "
                "or delete the shards there to regenerate them"
            )
        seeds = layout.seeds(index)
        same_seeds = record is not None and record.get("seed_start") == seeds.start and record.get("count") == len(seeds)
        if same_seeds and target is not None and target.has_taken(shard.name, record):
            skipped.append(index)
        elif same_seeds and shard_is_complete(shard, record, verify=True):
            if target is not None:
                _send(shard, record, target, keep_staged)
            skipped.append(index)
        else:
            if shard.is_file():
                print(f"regress.generate: {shard.name} is incomplete or fails its checksum; regenerating it", file=sys.stderr)
            todo.append(index)
    return todo, skipped


def _send(shard: Path, record: dict[str, Any], target: PipeCommand, keep_staged: bool) -> None:
    """Pipe a finished shard to the target, note it in the shard's record, then drop the staged file unless kept."""
    write_json(record_path(shard), {**record, "sent_to": target.send(shard)})
    if not keep_staged:
        shard.unlink()


def _drop_stale_manifest(output: Path, layout: ShardLayout) -> None:
    """Remove a manifest of another seed range (a dataset being extended): a manifest always means complete."""
    try:
        manifest = json.loads((output / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    if (manifest.get("seed_start"), manifest.get("num_samples")) != (layout.seed_start, layout.num_samples):
        (output / MANIFEST).unlink(missing_ok=True)


def _write_shard(
    output: Path,
    layout: ShardLayout,
    index: int,
    batches: Iterator[RenderedBatch],
    settings: dict,
    fingerprint: str,
    max_pending: int,
    pool: Executor | None,
    bar: tqdm,
    clock: StageClock,
) -> dict[str, Any]:
    """Encode and write one shard from the rendered batches; on a write error remove the partial file and say why."""
    seeds, path = layout.seeds(index), output / layout.filename(index)
    pending: deque[tuple[str, Future, memoryview | None]] = deque()

    def write_first() -> None:
        key, future, mesh = pending.popleft()
        with clock("write: waiting for workers"):
            members, seconds = future.result()
        clock.add("workers: encode (summed)", seconds)
        with clock("write: tar + hash"):
            writer.add(key, with_mesh(members, mesh))
        bar.update(1)

    try:
        with ShardWriter(path) as writer:
            done = 0
            while done < len(seeds):
                batch = next(batches)
                assert batch.shard == index and batch.seeds.start == seeds.start + done, "batches out of order"
                done += len(batch.seeds)
                with clock("write: submit"):
                    for i, seed in enumerate(batch.seeds):
                        sample = {k: v[i] for k, v in batch.arrays.items()}
                        job = (timed_call, record_members, sample, batch.meta[i], settings["image_format"])
                        pending.append((sample_key(seed), pool.submit(*job) if pool else _done(*job), batch.meshes[i]))
                while len(pending) > max_pending or (pending and pending[0][1].done()):
                    write_first()
            while pending:
                write_first()
            return writer.commit({"index": index, "seed_start": seeds.start, "fingerprint": fingerprint})
    except OSError as error:
        raise OSError(
            error.errno,
            f"writing {path} failed ({error.strerror or error}): the disk may be full or a file size limit reached; "
            "complete shards are kept, free some space and rerun the same command",
        ) from error


def _done(function, *args) -> Future:
    """A finished future: the in-process stand-in for a worker pool."""
    future: Future = Future()
    future.set_result(function(*args))
    return future


def _write_manifest_if_complete(
    output: Path, layout: ShardLayout, model: Generator, settings: dict, fingerprint: str, target: PipeCommand | None = None
) -> Path | None:
    """Gather every shard's record into manifest.json once all shards of the layout exist; None until then."""
    records = []
    for index in range(layout.num_shards):
        shard = output / layout.filename(index)
        record = read_record(shard)
        if record is None or record.get("fingerprint") != fingerprint:
            return None
        if not (target.has_taken(shard.name, record) if target is not None else shard_is_complete(shard, record, verify=False)):
            return None
        records.append({k: v for k, v in record.items() if k != "sent_to"})
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "settings": settings,
        "name": layout.name,
        "seed_start": layout.seed_start,
        "num_samples": layout.num_samples,
        "samples_per_shard": layout.samples_per_shard,
        "image_resolution": model.image_resolution,
        "depth_resolution": model.depth_resolution,
        "latent_shape": list(model.latent_shape),
        "mean_latent": model.mean_latent().detach().cpu().float().tolist(),
        "shards": records,
    }
    path = output / MANIFEST
    write_json(path, manifest)
    if target is not None:
        target.send(path)
    return path


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


def _verify_command(args: list[str]) -> int:
    """`--verify DIR [--progress false]`: the check of a finished dataset, instead of generating."""
    parser = argparse.ArgumentParser(prog="python -m regress.generate", description=verify.__doc__)
    parser.add_argument("--verify", required=True, metavar="DIR", help="shard folder, or pipe: template, with its manifest.json")
    parser.add_argument("--progress", type=lambda text: text.lower() in ("true", "1", "yes"), default=True)
    options = parser.parse_args(args)
    return verify(options.verify, options.progress)


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line: options from YAML files (`--config`: a file, or a short name of regress/configs/generate/) and
    flags, or `--verify DIR` to check a finished dataset; errors on bad input exit with code 1."""
    from jsonargparse import CLI

    args = sys.argv[1:] if args is None else args
    try:
        args = expand_config_arguments(args, "generate")
        if any(arg.split("=")[0] == "--verify" for arg in args):
            raise SystemExit(_verify_command(args))
        return CLI(generate, args=args, as_positional=False, epilog="python -m regress.generate --verify DIR checks a finished dataset instead.")
    except (ValueError, OSError, MemoryError) as error:
        print(f"regress.generate: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


if __name__ == "__main__":
    main()
