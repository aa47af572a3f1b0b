"""Photos as a dataset for `Trainer.predict`: each item is one photo's faces through the shared front end (detection,
crop, camera), run in the loader's worker processes while the device works on the previous batch, or the reason the
photo failed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from regress.inversion.front_end import FaceCrop, PhotoFrontEnd
from regress.inversion.photos import failure_reason
from regress.store.pairs import record_key


@dataclass
class PhotoItem:
    """A photo's faces (`faces`, largest first) or why it failed (`error`); `seconds` the front end took."""

    path: Path
    faces: list[FaceCrop] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def key(self, face: FaceCrop) -> str:
        """The face's output folder name: the photo's name with a digest of its path (and the face index after the first)."""
        return record_key(self.path, face.index)


class PhotoDataset(Dataset):
    """Photos -> `PhotoItem`s through the front end; a failing photo is an item with its reason, never an exception."""

    def __init__(self, photos: list[Path], front_end: PhotoFrontEnd) -> None:
        self.photos, self.front_end = photos, front_end

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> PhotoItem:
        path, start = self.photos[index], time.perf_counter()
        try:
            with torch.inference_mode():
                return PhotoItem(path, faces=self.front_end(path), seconds=time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - one photo's failure must not stop the others; it is listed
            return PhotoItem(path, error=failure_reason(path, error), seconds=time.perf_counter() - start)


def collate_photos(items: list[PhotoItem]) -> list[PhotoItem]:
    """Batches stay lists of items: the faces are stacked on the device by the predictor."""
    return items
