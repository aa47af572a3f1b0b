"""The loose-file layout of the origin's published sets: one folder per kind of member, one file per sample.

    images/seed0042.png  depth128x128/seed0042.png  latent/seed0042.npy  cam_poses/seed0042.npy  shapes/seed0042.obj

A sample's key is its files' stem; the image is its one required member. `python -m regress.export` writes our sets
this way (adding `depth/` in world units, `mask/`, `camera_cond/`) with a `manifest.json` listing every file's size and
SHA-256; `--data folder` reads any such folder. The index is one listing of each folder, made once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regress.store.files import PARTIAL, parse_manifest

FORMAT = "regress-folder-v1"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
FILES = "files"  # the manifest's list: relative path -> [bytes, SHA-256]


def seed_key(seed: int) -> str:
    """The origin's file stem of a seed: `seed0042`."""
    return f"seed{seed:04d}"


@dataclass(frozen=True)
class FolderIndex:
    """Every sample's files, by member and key, from one listing per member folder: no file is opened or stat-ed.

    `files[member][key]` is the sample's file name in `root / folders[member]`; a member whose folder is absent is
    absent from `files`. `keys` are the stems of the images, sorted.
    """

    root: Path
    folders: dict[str, str]
    keys: list[str]
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    def path(self, member: str, key: str) -> Path:
        return self.root / self.folders[member] / self.files[member][key]

    def missing(self, member: str) -> list[str]:
        """The keys whose `member` file is absent while its folder exists."""
        have = self.files[member]
        return [key for key in self.keys if key not in have]


def _listing(folder: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """stem -> file name of the files in `folder` with one of `suffixes`; an earlier suffix wins for a stem
    (`.npy` before `.png`: the exact file first). Unfinished `.partial` files are no files."""
    found: dict[str, tuple[int, str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and suffix in suffixes and not entry.name.endswith(PARTIAL):
                rank = suffixes.index(suffix)
                if stem not in found or rank < found[stem][0]:
                    found[stem] = (rank, entry.name)
    return {stem: name for stem, (_, name) in found.items()}


def index_folder(root: str | Path, folders: dict[str, str | None], suffixes: dict[str, tuple[str, ...]], required: str = "image") -> FolderIndex:
    """The index of a loose-file folder: `folders` (member -> folder name, None: not read) listed once each, the files
    with a member's `suffixes`; a FileNotFoundError naming the folder when `required`'s is absent or empty."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; give the folder that holds {folders[required]}/")
    present = {m: name for m, name in folders.items() if name and (root / name).is_dir()}
    if required not in present:
        raise FileNotFoundError(f"{root} has no {folders[required]}/ folder of {required}s; name it with the data module's {required} option")
    files = {member: _listing(root / name, suffixes[member]) for member, name in present.items()}
    if not files[required]:
        raise FileNotFoundError(f"{root / present[required]} holds no {required} file ({', '.join(suffixes[required])})")
    return FolderIndex(root, present, sorted(files[required]), files)


def read_folder_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest `python -m regress.export` wrote in a folder, None when it has none (an origin set)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes(), str(path), "a regress folder manifest", FORMAT, "rerun python -m regress.export to write it again")
