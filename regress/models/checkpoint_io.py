"""Checkpoints written whole, with their SHA-256 beside them, and read back only when they still match.

`VerifiedCheckpointIO` is the Lightning plugin that `python -m regress.fit` saves through: each checkpoint
is written to `NAME.PID.partial`, synced and renamed into place, and `NAME.sha256` lists its SHA-256 in
`sha256sum` format. While a save replaces a file, the list holds the old and the new hash, so a run
killed at any moment leaves a checkpoint that its list accepts. `read_checkpoint` (resuming, the
benchmark, the encoder) refuses a file whose bytes match no listed hash: a damaged checkpoint is
named as one instead of training on from flipped bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from regress.store.files import AtomicFile, file_sha256, write_atomic

HASHES = ".sha256"


def hashes_path(path: Path) -> Path:
    return path.with_name(path.name + HASHES)


def listed_hashes(path: Path) -> set[str]:
    """The SHA-256 values the list beside `path` accepts; empty when there is no list (a file from elsewhere)."""
    beside = hashes_path(path)
    if not beside.is_file():
        return set()
    try:
        lines = beside.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{beside} is damaged (not a sha256sum list: {error.reason} at byte {error.start}); restore it from a copy, or "
                         f"delete it to use {path.name} unchecked") from error  # fmt: skip
    return {line.split()[0] for line in lines if line.strip()}


def _write_hashes(path: Path, hashes: list[str]) -> None:
    write_atomic(hashes_path(path), "".join(f"{h}  {path.name}\n" for h in hashes).encode())


class VerifiedCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose files appear whole and carry their SHA-256 (see the module's note)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = AtomicFile(path, unique=True)  # two processes saving one name never share a partial file
        try:
            torch.save(checkpoint, partial.file)
            partial.close()
        except BaseException:
            partial.discard()
            raise
        new = file_sha256(partial.partial)
        old = (listed_hashes(path) or {file_sha256(path)}) if path.is_file() else set()  # a file saved before lists were kept
        _write_hashes(path, [new, *sorted(old - {new})])  # both, while the rename below is under way
        partial.commit()
        _write_hashes(path, [new])

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        hashes_path(Path(path)).unlink(missing_ok=True)


def read_checkpoint(path: str | Path, what: str, instead: str) -> dict[str, Any]:
    """A checkpoint of `python -m regress.fit`, tensors memory-mapped and no pickled code run.

    A missing file, a folder, a file whose bytes match no hash listed beside it, or a damaged or foreign
    file is an OSError or ValueError of one line that names the file (as `what`, e.g. "depth checkpoint")
    and says what to give `instead`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} {'is a folder' if path.is_dir() else 'does not exist'}; {instead}")
    listed = listed_hashes(path)
    if listed and file_sha256(path) not in listed:
        raise ValueError(f"{what} {path} is damaged: its bytes no longer match the SHA-256 in {hashes_path(path).name} "
                         f"saved beside it; restore it from a copy, or {instead}")  # fmt: skip
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises a different type for each way a file can be damaged or foreign
        raise ValueError(f"{what} {path} cannot be read as a PyTorch checkpoint ({type(error).__name__}); "
                         f"it is truncated, damaged or not a checkpoint: {instead}") from error  # fmt: skip
    if not isinstance(saved, dict) or "state_dict" not in saved or "hyper_parameters" not in saved:
        raise ValueError(f"{what} {path} is a PyTorch file but not a checkpoint of python -m regress.fit; {instead}")
    return saved


def checkpoint_class(saved: dict[str, Any]) -> str:
    """The regressor class a checkpoint holds, by name (DepthRegressor); empty when it does not say."""
    return saved["hyper_parameters"].get("_class_path", "").rpartition(".")[2]
