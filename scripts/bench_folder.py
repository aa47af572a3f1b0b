"""Reading speed on the CPU: the same samples as shards (`--data shards`) and as an exported loose-file folder
(`--data folder`, written by `python -m regress.export`), one pass of each data module's training loader.

    python scripts/bench_folder.py --samples 2000 --workers 0 2 --work /tmp/bench-folder

Generates the analytic head's samples once (`regress.generate`, seeds 0.., 128² images and depth by default), exports
them, then prints per data module and loader workers: the time to make the module (the folder's index: one listing
per member folder), and samples per second over a whole pass (second pass: the page cache is warm for both).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from regress.datamodules.folder import FolderDataModule
from regress.datamodules.shards import ShardDataModule
from regress.export import export
from regress.generate import generate


def one_pass(make) -> tuple[float, float, int]:
    """(seconds to make the module, samples/s of its second full training pass, samples of a pass)."""
    start = time.perf_counter()
    data = make()
    made = time.perf_counter() - start
    data.setup("fit")
    loader = data.train_dataloader()
    rates = []
    for _ in range(2):
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += batch["image"].shape[0]
        rates.append(seen / (time.perf_counter() - start))
    del loader, data  # persistent workers end here, not inside the next module's timing
    gc.collect()
    return made, rates[-1], seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=128, help="image and depth side")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-folder"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    shards, folder = args.work / "shards", args.work / "folder"
    options = {"image_resolution": args.resolution, "depth_resolution": args.resolution}
    generate(shards, generator="analytic", generator_options=options, num_samples=args.samples, samples_per_shard=250, batch_size=50,
             device="cpu", progress=False)  # fmt: skip
    start = time.perf_counter()
    export(str(shards), str(folder), progress=False)
    print(f"export: {args.samples} samples in {time.perf_counter() - start:.1f} s")
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    shard_bytes = sum(p.stat().st_size for p in shards.glob("*.tar"))
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.parent != folder)
    print(f"on disk: shards {shard_bytes / 1e6:.1f} MB, folder {folder_bytes / 1e6:.1f} MB in {files} files")
    for workers in args.workers:
        common = {"batch_size": args.batch_size, "image_size": None, "num_workers": workers}
        for name, make in (
            ("shards", lambda: ShardDataModule(shards, val_shards=0, resampled=False, **common)),
            ("folder", lambda: FolderDataModule(folder, depth="depth", val_fraction=0.0, **common)),
        ):
            made, rate, seen = one_pass(make)
            print(f"{name:7s} workers {workers}: made in {made * 1000:7.1f} ms, {rate:7.0f} samples/s over a pass of {seen}")


if __name__ == "__main__":
    main()
