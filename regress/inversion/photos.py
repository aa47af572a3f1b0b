"""Which photos to use, and their given cameras: a folder, a list file or one image; EG3D labels or NAME.npy files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from regress.inversion.align import FaceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(source: str | Path | list) -> list[Path]:
    """Photos to pair: a folder (its image files, recursively, sorted), a text file of paths, one image, or a list."""
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_dir():
        # links that lead nowhere are listed too: they fail with their reason instead of vanishing
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
        if not found:
            raise FileNotFoundError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if source.suffix.lower() == ".txt":
        lines = [line.strip() for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not lines:
            raise ValueError(f"{source} lists no photos (one path a line, relative to its folder)")
        return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]
    if source.is_file():
        return [source]
    raise FileNotFoundError(f"{source} is not a folder, a .txt list of photos or an image file")


def failure_reason(path: Path, error: Exception) -> str:
    """One line on why a photo could not be used: a FaceError's own words (they name the photo and the fix), or the
    photo, the error's type and its message."""
    return str(error) if isinstance(error, FaceError) else f"{path}: {type(error).__name__}: {error}"


class CameraLabels:
    """Given EG3D camera labels by photo: an EG3D `dataset.json` ({"labels": [[name, [25 numbers]], ...]}, names
    relative to its folder or bare file names), or `npy` for a `NAME.npy` beside each photo."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.labels: dict[str, list] = {}
        if self.source != "npy":
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"camera labels {path} do not exist; give an EG3D dataset.json or 'npy' (NAME.npy beside each photo)")
            form = 'an EG3D dataset.json holds {"labels": [[name, [25 numbers]], ...]}'
            try:
                content = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"camera labels {path} are not valid JSON ({error}); {form}") from error
            entries = content.get("labels") if isinstance(content, dict) else None
            if not isinstance(entries, list):
                raise ValueError(f"{path} has no 'labels' list; {form}")
            bad = next((e for e in entries if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str))), None)
            if bad is not None:
                raise ValueError(f"{path}: the entry {str(bad)[:60]} is not [name, [25 numbers]]; {form}")
            self.root, self.labels = path.parent, {name: label for name, label in entries}

    def __call__(self, photo: Path) -> torch.Tensor:
        """The photo's label (25,) float32; FaceError when it has none or it is not 25 finite numbers."""
        if self.source == "npy":
            path = photo.with_suffix(".npy")
            if not path.is_file():
                raise FaceError(f"{photo}: no camera label {path.name} beside it")
            label = np.load(path, allow_pickle=False)
        else:
            label = self.labels.get(self._name(photo))
            if label is None:
                raise FaceError(f"{photo}: no camera label for it in {self.source}")
        try:
            label = np.asarray(label, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            label = np.zeros(0, np.float32)
        if label.shape != (25,) or not np.isfinite(label).all():
            raise FaceError(f"{photo}: its camera label is not 25 finite numbers (cam2world 4x4, then intrinsics 3x3)")
        fx, cx, cy = label[16], label[18], label[21]
        if not (0 < cx < 1 and 0 < cy < 1 and 0 < fx < 100):
            raise FaceError(f"{photo}: its camera label's intrinsics (fx {fx:g}, cx {cx:g}, cy {cy:g}) are not normalized by the "
                            "image size as EG3D's are (fx about 4.26, cx = cy = 0.5); divide the pixel values by the side")  # fmt: skip
        return torch.from_numpy(label)

    def _name(self, photo: Path) -> str:
        """The photo's name in dataset.json: its path relative to the file's folder when inside it, else its file name."""
        try:
            relative = photo.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return photo.name
        return relative if relative in self.labels else photo.name
