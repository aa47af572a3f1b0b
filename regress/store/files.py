"""Files that appear whole or not at all, and their SHA-256: the one writer and the one hasher of every format.

A file (or a record's folder) is written under a temporary name beside its final one, `NAME.partial`
(`NAME.PID.partial` where several processes may write it at once), and renamed into place when
complete, so a reader or a resumed run never sees half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

PARTIAL = ".partial"


def partial_path(path: Path, unique: bool = False) -> Path:
    """Where `path` is written before it is renamed into place; `unique` adds this process's id."""
    return path.with_name(f"{path.name}.{os.getpid()}{PARTIAL}" if unique else path.name + PARTIAL)


def stale_partials(folder: Path, names: set[str]) -> list[Path]:
    """The temporary files (`NAME.partial`, `NAME.PID.partial`) of the files `names` in `folder` that writers killed
    outright left behind, from one listing of the folder: to remove where no writer of those files can be running."""
    def owner(partial: str) -> str:
        stem = partial[: -len(PARTIAL)]
        head, _, pid = stem.rpartition(".")
        return head if pid.isdigit() else stem

    return sorted(p for p in Path(folder).glob(f"*{PARTIAL}") if owner(p.name) in names)


def resolved(path: Path) -> Path:
    """The path with its links followed, or as an absolute path where they lead in a loop: one name for one file."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python before 3.13 on a symlink loop
        return Path(path).absolute()


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes through a temporary name unique to this process, then rename."""
    partial = partial_path(path, unique=True)
    try:
        partial.write_bytes(data)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_failed(path: Path, error: OSError, then: str = "complete shards are kept, free some space and rerun the same command") -> OSError:
    """The error to raise when writing `path` failed: what failed, the likely cause, and what to do `then`."""
    return OSError(error.errno, f"writing {path} failed ({error.strerror or error}): the disk may be full or a file size limit reached; {then}")


def parse_manifest(text: str | bytes, where: str, kind: str, expected: str, rewrite: str) -> dict[str, Any]:
    """A manifest's JSON in the format `expected`; a ValueError naming `where` when it is damaged, or is not `kind`."""
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is damaged ({error}); {rewrite}") from error
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != expected:
        raise ValueError(f"{where} is not {kind} (format {found!r}, expected {expected!r})")
    return manifest


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON with sorted keys (one space indent, a final newline) through `write_atomic`."""
    write_atomic(path, (json.dumps(content, sort_keys=True, indent=1) + "\n").encode())


def write_folder(folder: Path, members: dict[str, bytes]) -> Path:
    """Write files named by `members` into `folder.partial/`, then rename that folder to `folder`, replacing it."""
    partial = partial_path(folder)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in members.items():
        (partial / name).write_bytes(data)
    if folder.is_dir():  # a rename cannot replace a folder that holds files; a crash here leaves neither, so it is redone
        shutil.rmtree(folder)
    partial.replace(folder)
    return folder


class AtomicFile:
    """A file streamed to `path.partial` (`path.PID.partial` when `unique`): `close` syncs it to disk, `commit` renames
    it into place, `discard` removes it."""

    def __init__(self, path: Path, unique: bool = False) -> None:
        self.path, self.partial = Path(path), partial_path(Path(path), unique)
        self.file = open(self.partial, "wb")

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def commit(self) -> None:
        if not self.file.closed:
            self.close()
        self.partial.replace(self.path)

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # the error that got us here is the one to report
            self.file.close()
        self.partial.unlink(missing_ok=True)


def hash_stream(stream: BinaryIO, copy_to: BinaryIO | None = None, on_read: Callable[[int], Any] | None = None) -> tuple[int, str]:
    """(bytes, SHA-256) of everything `stream` gives, in 4 MiB pieces; each piece also goes to `copy_to` when given."""
    sha, size = hashlib.sha256(), 0
    while piece := stream.read(1 << 22):
        sha.update(piece)
        if copy_to is not None:
            copy_to.write(piece)
        size += len(piece)
        if on_read is not None:
            on_read(len(piece))
    return size, sha.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    with open(path, "rb") as file:
        return hash_stream(file)[1]


def tree_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder: of its files' relative names and SHA-256, one line each, sorted."""
    if path.is_file():
        return file_sha256(path)
    lines = "".join(f"{p.relative_to(path)}:{file_sha256(p)}\n" for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()
