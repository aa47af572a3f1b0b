"""Real photos paired with their inversions (`--data pairs`), in the Sample batch format of the other data modules.

`image` is the model's input: the real photo by default (the regressors are then trained or
scored on real faces against the inversion's depth, mask and w), or the inverted render. Both
also come as `real` and `inverted`, with the crop's `landmarks`. A set is read from its record
folder, or from its shards when the folder is gone.
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from regress.datamodules.manifest import ManifestLatents
from regress.sample import Batch, collate_samples, decode_sample, resize_images
from regress.store.pairs import RECORD_FILES, RECORDS, check_pair_records, read_pair_record, read_pairs_manifest, record_problem
from regress.store.shards import iter_shard


def decode_pair(members: dict[str, bytes], source: str, image: Literal["real", "inverted"] = "real") -> dict[str, Any]:
    """One record's Sample tensors plus `real`, `inverted` (uint8 (3, H, W)) and `landmarks` (68, 2)."""
    sample = decode_sample(members, source)
    try:
        with Image.open(io.BytesIO(members["real.png"])) as pil:
            real = torch.from_numpy(np.asarray(pil.convert("RGB")).transpose(2, 0, 1).copy())
        landmarks = torch.from_numpy(np.load(io.BytesIO(members["landmarks.npy"]), allow_pickle=False))
    except KeyError as error:
        raise ValueError(f"{source}: pair record lacks member {error}; rebuild it with python -m regress.evaluate pairs") from error
    sample["inverted"], sample["real"], sample["landmarks"] = sample["image"], real, landmarks
    sample["image"] = real if image == "real" else sample["inverted"]
    return sample


def collate_pairs(samples: list[dict[str, Any]]) -> Batch:
    """Pairs -> a Sample batch, with `real`, `inverted` and `landmarks` stacked too."""
    batch = collate_samples(samples)
    for name in ("real", "inverted", "landmarks"):
        batch[name] = torch.stack([s[name] for s in samples])
    return batch


class PairDataset(Dataset):
    """Pair records of a pairs set, by key order; reads the record folder, or the shards (all in memory) when it is absent.

    Before the first sample every record the manifest lists is checked present with its files at their sizes, and each
    record's SHA-256 as it is read: a missing or damaged record stops the reader, naming it. `skip_corrupt` checks
    every byte up front instead and leaves the bad records out, with a line that counts them.
    """

    def __init__(self, root: str | Path, image: Literal["real", "inverted"] = "real", skip_corrupt: bool = False) -> None:
        self.root, self.image = Path(root), image
        self.manifest = read_pairs_manifest(root)
        self.listed = self.manifest.get(RECORD_FILES)
        folder = self.root / RECORDS
        if folder.is_dir():
            self.members: dict[str, dict[str, bytes]] | None = None
            available, problems = check_pair_records(self.root, self.manifest, verify=skip_corrupt)
        elif self.manifest.get("shards"):
            self.members = {k: m for s in self.manifest["shards"] for k, m in iter_shard(str(self.root / s["file"]), s["count"], s.get("bytes"), s.get("sha256"))}
            available = sorted(self.members)
            problems = [f"{root}: record {key} is missing from its shards" for key in sorted(set(self.listed or ()) - set(self.members))]
        else:
            raise FileNotFoundError(f"{root} has neither {RECORDS}/ nor shards; rebuild it with python -m regress.evaluate pairs")
        if problems and not skip_corrupt:
            raise ValueError(f"{problems[0]} ({len(problems)} of the {len(self.listed)} records its manifest lists are missing or damaged); "
                             "rebuild the set with python -m regress.evaluate pairs, or skip them with skip_corrupt")  # fmt: skip
        if problems:
            print(f"regress: skipping {len(problems)} of the {len(self.listed)} records of {root}, missing or damaged: {problems[0]} ...", file=sys.stderr)
        if not available:
            raise ValueError(f"{root} holds no pair records: every photo failed (see errors.json there)")
        self.keys = available

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        if self.members is not None:
            members = self.members[key]
        else:
            members = read_pair_record(self.root, key)
            problem = record_problem(self.root, key, self.listed[key], members) if self.listed is not None else None
            if problem is not None:
                raise ValueError(f"{self.root}: {problem}; rebuild the set with python -m regress.evaluate pairs, or skip damaged records with skip_corrupt")
        sample = decode_pair(members, f"{self.root} record {key}", self.image)
        sample["meta"]["key"] = key
        return sample


def _key_hash(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def validation_keys(keys: list[str], fraction: float) -> list[str]:
    """A stable split by a hash of the key (a record stays on its side whatever else the set holds); with
    fraction > 0 and two or more records, both sides get one at least (lowest hash held out, highest kept)."""
    held = [k for k in keys if _key_hash(k) < fraction]
    if len(keys) > 1 and fraction > 0:
        if not held:
            held = [min(keys, key=_key_hash)]
        elif len(held) == len(keys):
            held.remove(max(keys, key=_key_hash))
    return held


def check_split_options(batch_size: int, val_fraction: float) -> None:
    """A ValueError for a batch size below 1 or a validation share outside [0, 1)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


class PairDataModule(ManifestLatents, L.LightningDataModule):
    """Sample batches of real-versus-inverted pairs built by `python -m regress.evaluate pairs`; `--data pairs`.

    Args:
        root: the pairs folder (records/ or shards, with manifest.json).
        batch_size: pairs per batch.
        val_fraction: share of records held out for validation, split by a hash of the key.
        image_size: side of the images the model sees (resized on device); None keeps the stored size.
        image: the model input, `real` (the aligned photo) or `inverted` (the generator's render).
        num_workers: loader processes.
        skip_corrupt: leave out (and count, in one line) records that are missing or fail their manifest's size or
            SHA-256 (every byte is checked up front then), instead of stopping at the first.
    """

    def __init__(
        self,
        root: str | Path = "data/pairs/analytic",
        batch_size: int = 8,
        val_fraction: float = 0.2,
        image_size: int | None = 128,
        image: Literal["real", "inverted"] = "real",
        num_workers: int = 0,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__()
        check_split_options(batch_size, val_fraction)
        self.save_hyperparameters()
        self.root, self.manifest = Path(root), read_pairs_manifest(root)
        self.batch_size, self.image_size, self.image, self.num_workers = batch_size, image_size, image, num_workers
        self.val_fraction, self.skip_corrupt = val_fraction, skip_corrupt

    def setup(self, stage: str | None = None) -> None:
        """Read the set once; training and validation are views of it, split by key."""
        everything = PairDataset(self.root, self.image, self.skip_corrupt)
        held = set(validation_keys(everything.keys, self.val_fraction))
        val = [i for i, key in enumerate(everything.keys) if key in held]
        train = [i for i, key in enumerate(everything.keys) if key not in held] or val
        self.train_set = Subset(everything, train)
        self.val_set = Subset(everything, val) if val else None
        self.all_set = everything

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset, self.batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=self.num_workers, collate_fn=collate_pairs
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled; a last partial batch is dropped (batch norm cannot train on one sample) unless it is the only one."""
        return self._loader(self.train_set, shuffle=True, drop_last=len(self.train_set) >= self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.all_set, shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.image_size is not None:
            batch["image"] = resize_images(batch["image"], self.image_size)
        return batch
