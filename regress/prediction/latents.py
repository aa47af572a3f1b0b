"""A latent w from wherever one is kept: a `.npy` file, a folder holding `w.npy` (a predict face, a pair record), or the
Sample of a seed in a shard set (`SHARDS_FOLDER:SEED`), with the generator checksum its source records, if any."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regress.sample import decode_sample
from regress.store.shard_set import ShardLayout, read_shard_manifest, shard_url
from regress.store.shards import iter_shard, sample_key

SOURCES = "a .npy file, a folder holding w.npy (a predict face, a pair record) or SHARDS_FOLDER:SEED"


@dataclass(frozen=True)
class Latent:
    """w (num_ws, w_dim) float32, where it came from, and the checksum of the generator that made it (None: unknown)."""

    w: np.ndarray
    source: str
    generator_checksum: str | None = None


def load_latent(source: str) -> Latent:
    """The w that `source` names; a ValueError or FileNotFoundError that says what to give instead."""
    folder, _, seed = source.rpartition(":")
    if folder and seed.isdigit() and Path(folder).is_dir():
        return _from_shards(Path(folder), int(seed))
    path = Path(source)
    if path.is_dir():
        if not (path / "w.npy").is_file():
            raise FileNotFoundError(f"{path} holds no w.npy; give {SOURCES}")
        meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").is_file() else {}
        checksum = meta.get("generator_checksum") or meta.get("generator", {}).get("generator", {}).get("checksum")
        return Latent(_checked(np.load(path / "w.npy", allow_pickle=False), path), str(path), checksum)
    if path.suffix == ".npy" and path.is_file():
        return Latent(_checked(np.load(path, allow_pickle=False), path), str(path))
    raise FileNotFoundError(f"{source} is not {SOURCES}")


def _from_shards(root: Path, seed: int) -> Latent:
    manifest = read_shard_manifest(root)
    layout = ShardLayout(manifest["name"], manifest["seed_start"], manifest["num_samples"], manifest["samples_per_shard"])
    first, last = layout.seed_start, layout.seed_start + layout.num_samples - 1
    if not first <= seed <= last:
        raise ValueError(f"{root} holds seeds {first} to {last}, not {seed}")
    index = (seed - first) // layout.samples_per_shard
    record = manifest["shards"][index]
    for key, members in iter_shard(shard_url(root, record["file"]), record["count"], record["bytes"], record["sha256"]):
        if key == sample_key(seed):
            sample = decode_sample(members, f"{record['file']} sample {key}")
            return Latent(sample["w"].numpy().astype(np.float32), f"{root}:{seed}", sample["meta"].get("generator_checksum"))
    raise ValueError(f"{root}/{record['file']} has no sample of seed {seed}; verify the set (python -m regress.generate --verify)")


def _checked(w: np.ndarray, path: Path) -> np.ndarray:
    """w as (num_ws, w_dim) float32: a leading batch of one is dropped."""
    w = np.asarray(w, np.float32)
    if w.ndim == 3 and len(w) == 1:
        w = w[0]
    if w.ndim != 2 or not np.isfinite(w).all():
        raise ValueError(f"{path} is not one latent w (num_ws, w_dim) of finite numbers: shape {w.shape}")
    return w
