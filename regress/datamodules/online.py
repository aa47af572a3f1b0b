"""Training data synthesized on the training device: the loader yields seeds and their views only.

A sample seed is a pure function of (global seed, epoch, global rank, index), so DDP ranks never
share a sample, a resumed run continues the same stream, and validation reads a fixed seed range
that training never touches. The generator renders in `on_after_batch_transfer`, on the batch's
device, so worker processes do no CUDA work. The generator enters as a `GeneratorSpec`; this module and
a latent model that renders its latents each ask the spec for it on their device and share one instance.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from regress.camera import View, ViewMixture
from regress.generators import Generator, GeneratorSpec, LatentSpace
from regress.sample import Batch, resize_images

INDEX_BITS, RANK_BITS, EPOCH_BITS = 32, 12, 18  # 62 bits of (epoch, rank, index) counter
TRAIN_FLAG = 1 << 62  # every training seed has this bit; validation seeds lie below it


def stream_key(global_seed: int) -> int:
    """A 62-bit key for a global seed; XOR with it permutes the training counters of one run."""
    state = np.random.SeedSequence([int(global_seed), 0x5EED]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 62) - 1)


def stream_counter(epoch: int, rank: int, index: int) -> int:
    """(epoch, rank, index) packed into 62 bits; a ValueError names a part that does not fit."""
    for name, value, bits in (("epoch", epoch, EPOCH_BITS), ("rank", rank, RANK_BITS), ("index", index, INDEX_BITS)):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{name} {value} is outside the seed layout's range [0, 2**{bits})")
    return (epoch << (RANK_BITS + INDEX_BITS)) | (rank << INDEX_BITS) | index


def train_seed(global_seed: int, epoch: int, rank: int, index: int) -> int:
    """The seed of training sample `index` of `rank` in `epoch`: distinct for every triple, >= 2**62."""
    return TRAIN_FLAG | (stream_counter(epoch, rank, index) ^ stream_key(global_seed))


def train_seeds(global_seed: int, epoch: int, rank: int, world_size: int, epoch_length: int) -> list[int]:
    """The seeds one rank trains on in one epoch: its share (epoch_length // world_size) of the epoch."""
    count, key = epoch_length // world_size, stream_key(global_seed)
    first = stream_counter(epoch, rank, 0)
    stream_counter(epoch, rank, max(count - 1, 0))  # the last index must fit too
    return [TRAIN_FLAG | ((first | i) ^ key) for i in range(count)]


def echoed(seeds: Sequence[int], batch_size: int, reuse: int) -> list[int]:
    """`seeds` regrouped so that each batch of distinct seeds comes `reuse` times in a row (data echoing).

    The result is as long as `seeds` and uses its first ceil(batches / reuse) batches: a rank trains
    on as many samples per epoch, rendered `reuse` times less often.
    """
    batches = -(-len(seeds) // batch_size)
    return [s for b in range(batches) for s in seeds[(b // reuse) * batch_size : (b // reuse + 1) * batch_size]][: len(seeds)]


def val_seeds(start: int, size: int, rank: int = 0, world_size: int = 1) -> range:
    """One rank's share of the fixed validation seeds [start, start + size), strided over ranks."""
    if not (0 <= start and start + size <= TRAIN_FLAG):
        raise ValueError(f"validation seeds [{start}, {start + size}) must lie in [0, 2**62), below the training seeds")
    return range(start + rank, start + size, world_size)


class SeedSampler(DistributedSampler):
    """Yields one rank's seeds for the current epoch, skipping the batches a resumed run already did.

    It is a DistributedSampler only so that Lightning leaves it unwrapped: it shards by rank itself.
    """

    def __init__(self, seeds_of_epoch: Callable[[int], Sequence[int]], length: int) -> None:
        self.seeds_of_epoch, self.length = seeds_of_epoch, length
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        """Continue `epoch` after its first `samples_done` samples (a mid-epoch checkpoint)."""
        self.epoch, self.skip = epoch, samples_done

    def __iter__(self) -> Iterator[int]:
        seeds = self.seeds_of_epoch(self.epoch)
        skip, self.skip = self.skip, 0
        return iter(seeds[skip:])

    def __len__(self) -> int:
        return self.length


class ViewDataset(Dataset):
    """Seed -> its view (drawn from the mixture by seed) as tensors: all a loader worker does."""

    def __init__(self, views: ViewMixture, validation: bool) -> None:
        self.views, self.validation = views, validation
        self.category_index = {c.name: k for k, c in enumerate(views.categories)}

    def __getitem__(self, seed: int) -> dict[str, torch.Tensor]:
        view = self.views.draw(seed)
        return {
            "seed": torch.tensor(seed, dtype=torch.int64),
            "category": torch.tensor(self.category_index[view.category]),
            "yaw": torch.tensor(view.yaw, dtype=torch.float64),
            "pitch": torch.tensor(view.pitch, dtype=torch.float64),
            "fov_deg": torch.tensor(view.fov_deg, dtype=torch.float64),
            "radius": torch.tensor(view.radius, dtype=torch.float64),
            "pivot": torch.tensor(view.pivot, dtype=torch.float64),
            "validation": torch.tensor(self.validation),
        }

    def to_views(self, batch: dict[str, torch.Tensor]) -> list[View]:
        """The View objects of a collated batch (inverse of `__getitem__`)."""
        names = [c.name for c in self.views.categories]
        rows = zip(batch["category"].tolist(), batch["yaw"].tolist(), batch["pitch"].tolist(),
                   batch["fov_deg"].tolist(), batch["radius"].tolist(), batch["pivot"].tolist())  # fmt: skip
        return [View(names[c], yaw, pitch, fov, radius, tuple(pivot)) for c, yaw, pitch, fov, radius, pivot in rows]


class SynthOnlineDataModule(L.LightningDataModule):
    """Sample batches rendered on the training device from seeds; `--data synth-online`.

    Args:
        generator: backend name (None: `eg3d` with a checkpoint, else the analytic default).
        checkpoint: generator weights (a local path).
        generator_options: backend constructor options, e.g. `{image_resolution: 128}`.
        views: view mixture, a short name of regress/configs/views/ or a YAML path.
        epoch_length: training samples per epoch, over all ranks (256: a short CPU run); each rank's share is rounded down to
            whole batches, so every training batch has one shape and a generator compiled for fixed
            shapes (EG3D's fast path) compiles it once, not again for a last, shorter batch.
        batch_size: samples per batch and rank.
        val_size: validation samples, seeds [val_seed_start, val_seed_start + val_size).
        image_size: side of the images the model sees (resized on device from the generator's).
        psi, cutoff: truncation of w towards the mean latent.
        jitter: the renderer's training jitter for training batches (validation never jitters).
        reuse: train on each rendered batch this many steps in a row (data echoing, no augmentation):
            synthesis per training step drops by this factor when it is the bottleneck; an epoch
            still has epoch_length training samples, epoch_length / reuse of them distinct.
        cache_val: keep rendered validation batches on the device (they are the same every epoch).
        seed: global seed of the training stream.
        num_workers: loader processes (they only draw views).
    """

    def __init__(
        self,
        generator: str | None = None,
        checkpoint: str | Path | None = None,
        generator_options: dict[str, Any] | None = None,
        views: str | Path = "published",
        epoch_length: int = 256,
        batch_size: int = 16,
        val_size: int = 64,
        val_seed_start: int = 0,
        image_size: int = 128,
        psi: float = 0.7,
        cutoff: int | None = None,
        jitter: bool = True,
        reuse: int = 1,
        cache_val: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("epoch_length", epoch_length), ("batch_size", batch_size), ("image_size", image_size), ("reuse", reuse)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        val_seeds(val_seed_start, val_size)
        self.save_hyperparameters()
        self.generator_spec = GeneratorSpec(generator, checkpoint, generator_options)
        self.views = ViewMixture.load(views)
        self.epoch_length, self.batch_size, self.val_size = epoch_length, batch_size, val_size
        self.val_seed_start, self.image_size, self.seed = val_seed_start, image_size, seed
        self.psi, self.cutoff, self.jitter, self.num_workers = psi, cutoff, jitter, num_workers
        self.cache_val, self.reuse = cache_val, reuse
        self._dataset = ViewDataset(self.views, validation=True)
        self._val_cache: dict[tuple[int, ...], Batch] = {}
        self._echo: tuple[tuple[int, ...], Batch] | None = None  # the last training batch, while reuse > 1
        self._train_sampler: SeedSampler | None = None
        self._resume: dict[str, int] | None = None

    @property
    def generator(self) -> Generator:
        """The generator this data renders with: this process's instance of its spec, wherever it last ran."""
        return self.generator_spec.build()

    @property
    def latent_space(self) -> LatentSpace:
        """The generator's latent shape and mean (on the CPU), and its spec."""
        generator = self.generator_spec.build()
        return LatentSpace(generator.latent_shape, generator.mean_latent().detach().float().cpu(), self.generator_spec)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_seeds(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """The seeds `rank` of `world_size` trains on in `epoch`, in order (each batch `reuse` times)."""
        return echoed(train_seeds(self.seed, epoch, rank, world_size, self.epoch_length), self.batch_size, self.reuse)

    def val_seeds(self, rank: int = 0, world_size: int = 1) -> range:
        """The fixed validation seeds of `rank`; the same in every epoch and run."""
        return val_seeds(self.val_seed_start, self.val_size, rank, world_size)

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        length = self.epoch_length // world_size
        if length == 0:
            raise ValueError(f"epoch_length {self.epoch_length} gives no samples to each of {world_size} ranks")
        sampler = SeedSampler(lambda epoch: self.train_seeds(epoch, rank, world_size), length)
        if self._resume is not None:
            sampler.resume(**self._resume)
            self._resume = None
        self._train_sampler = sampler
        return self._loader(ViewDataset(self.views, validation=False), sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        seeds = self.val_seeds(*self._rank())
        return self._loader(self._dataset, SeedSampler(lambda epoch: seeds, len(seeds)))

    def _loader(self, dataset: ViewDataset, sampler: SeedSampler, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=drop_last)  # fmt: skip

    def synthesize(self, batch: dict[str, torch.Tensor]) -> Batch:
        """Render a loader batch (seeds and views) into a Sample batch on the batch's device."""
        seeds, device = tuple(batch["seed"].tolist()), batch["seed"].device
        validation = bool(batch["validation"].all())
        if validation:
            cached = self._val_cache.get(seeds)
        else:
            cached = self._echo[1] if self._echo is not None and self._echo[0] == seeds else None
        if cached is not None and cached["image"].device == device:
            return dict(cached)
        with torch.no_grad():
            sample = self.generator_spec.build(device).sample(
                seeds, self._dataset.to_views(batch), psi=self.psi, cutoff=self.cutoff, jitter=self.jitter and not validation
            )
        sample["image"] = resize_images(sample["image"], self.image_size)
        if validation and self.cache_val:
            self._val_cache[seeds] = dict(sample)
        if not validation and self.reuse > 1:
            self._echo = seeds, dict(sample)
        return sample

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        return self.synthesize(batch)

    def state_dict(self) -> dict[str, int]:
        """Where the training stream stands: the epoch and how many of its samples this rank trained on."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # Lightning counts a saved batch as done
        return {"epoch": trainer.current_epoch, "samples_done": done * self.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the stream where a checkpoint left it (Lightning's "dataloader is not resumable" warning does not apply)."""
        if state_dict:
            self._resume = dict(state_dict)
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable", category=UserWarning)
