"""The shard format: one WebDataset tar of Sample records, written deterministically, read back verified.

A shard `name-000123.tar` holds the samples of a fixed seed range, each under the key
`sample_key(seed)`, members in a fixed order with `meta.json` last. Tar headers carry no time,
owner or mode of the machine, so the same samples give the same bytes. A shard is written to
`*.partial` and renamed when complete; its record (`*.tar.json`: seeds, count, bytes, SHA-256,
settings fingerprint) is written just before, so a shard on disk with a matching record is
complete. A folder of shards and its manifest are `regress.store.shard_set`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlparse

import webdataset as wds

from regress.store.files import AtomicFile, file_sha256, hash_stream, write_json

RECORD = ".json"


def sample_key(seed: int) -> str:
    """The zero-padded key of a sample in its shard."""
    return f"{seed:010d}"


PARALLEL_HASH_BYTES = 1 << 20


class _HashingFile:
    """A write-only file that hashes and counts what goes through it; large pieces are hashed on a second
    thread while this one writes them (both release the interpreter lock)."""

    def __init__(self, file: io.BufferedWriter, hasher: ThreadPoolExecutor) -> None:
        self.file, self.hasher, self.sha256, self.size = file, hasher, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        if len(data) >= PARALLEL_HASH_BYTES:
            hashed = self.hasher.submit(self.sha256.update, data)
            self.file.write(data)
            hashed.result()
        else:
            self.file.write(data)
            self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ShardWriter:
    """Write one shard deterministically to `path.partial`; `commit` records it and renames it into place.

    The tar is written directly, each member as a USTAR header, its bytes (never copied) and zero
    padding, the bytes tarfile would write. Leaving the `with` block without `commit` (an error,
    Ctrl-C) removes the partial file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.count = 0

    def __enter__(self) -> "ShardWriter":
        self.target = AtomicFile(self.path)
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="regress-hash")
        self.hashing = _HashingFile(self.target.file, self.hasher)
        self.committed = False
        return self

    def add(self, key: str, members: dict[str, bytes | memoryview]) -> None:
        """Append one sample's members, in the given order, and hand them to the OS."""
        for member, data in members.items():
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            self.hashing.write(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
            self.hashing.write(data)
            self.hashing.write(bytes(-len(data) % tarfile.BLOCKSIZE))
        self.target.file.flush()
        self.count += 1

    def commit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Finish the tar, write its record (count, bytes, SHA-256 added), then rename it into place."""
        end = 2 * tarfile.BLOCKSIZE  # two zero blocks, then zeros to a whole record, as tarfile closes an archive
        self.hashing.write(bytes(end + -(self.hashing.size + end) % tarfile.RECORDSIZE))
        self.target.close()
        record = {**record, "file": self.path.name, "count": self.count, "bytes": self.hashing.size, "sha256": self.hashing.sha256.hexdigest()}
        write_json(record_path(self.path), record)
        self.target.commit()
        self.committed = True
        return record

    def __exit__(self, *exc_info) -> None:
        self.hasher.shutdown()
        if not self.committed:
            self.target.discard()


def record_path(shard: Path) -> Path:
    return shard.with_name(shard.name + RECORD)


def read_shard_record(shard: Path) -> dict[str, Any] | None:
    """The record written beside a complete shard, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(record_path(shard).read_text())
    except (OSError, ValueError):
        return None


def shard_is_complete(shard: Path, record: dict[str, Any] | None, verify: bool = True) -> bool:
    """True when the shard exists with its record's size (and, with `verify`, its SHA-256)."""
    if record is None or not shard.is_file() or shard.stat().st_size != record.get("bytes"):
        return False
    return not verify or file_sha256(shard) == record.get("sha256")


class ShardReadError(ValueError):
    """A shard that cannot be read: corrupt, truncated, or not what its manifest says."""


REGENERATE = "regenerate it (rerun the python -m regress.generate command that made it) or copy it again"


def is_local(url: str) -> bool:
    """Whether a shard URL is a plain path (else a WebDataset stream such as `pipe:...`)."""
    return not urlparse(url).scheme


def check_shard(
    url: str, size: int | None, sha256: str | None, copy_to: BinaryIO | None = None, on_read: Callable[[int], Any] | None = None
) -> None:
    """Raise ShardReadError unless the shard at `url` has its manifest's `size` and `sha256`.

    A local file's size is checked before a byte of it is read; a stream's once it ends. The bytes go to
    `copy_to` as they are hashed, when given.
    """
    try:
        if is_local(url):
            _check_size(url, os.stat(url).st_size, size)
        with wds.gopen(url, "rb") as stream:
            found, digest = hash_stream(stream, copy_to, on_read)
    except FileNotFoundError as error:
        raise ShardReadError(f"{url}: missing; {REGENERATE}") from error
    except OSError as error:
        raise ShardReadError(f"{url}: cannot be read ({error}); {REGENERATE}") from error
    _check_size(url, found, size)
    if sha256 is not None and digest != sha256:
        raise ShardReadError(
            f"{url}: SHA-256 {digest[:16]}... differs from its manifest's {sha256[:16]}...: corrupt (its bytes changed "
            f"on disk or in a copy); {REGENERATE}"
        )


def _check_size(url: str, found: int, size: int | None) -> None:
    if size is not None and found != size:
        raise ShardReadError(f"{url}: {found} bytes, its manifest says {size}: truncated or replaced; {REGENERATE}")


_VERIFIED: set[tuple] = set()  # the local shards this process has hashed, by file identity and expected digest


def _local_identity(path: str, size: int | None, sha256: str | None) -> tuple | None:
    """What a local shard is while its bytes stay put (device, inode, size, mtime) and what it should be; None when missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, size, sha256


@contextlib.contextmanager
def open_shard(url: str, size: int | None = None, sha256: str | None = None) -> Iterator[BinaryIO]:
    """A shard's bytes as a stream; with its manifest's `size` or `sha256`, checked before a byte is handed out.

    A local file is hashed in a first pass (the parse that follows reads it again, usually from the page
    cache), once per process while the file is unchanged (same inode, size and mtime): later epochs
    read it once, not twice. A stream (`pipe:`) is copied to a temporary file (in TMPDIR) while it is
    hashed, and read from there. Either way memory stays bounded whatever the shard's size, and
    corrupt bytes never leave here.
    """
    if size is None and sha256 is None:
        with wds.gopen(url, "rb") as stream:
            yield stream
    elif is_local(url):
        identity = _local_identity(url, size, sha256)
        if identity is None or identity not in _VERIFIED:
            check_shard(url, size, sha256)
            _VERIFIED.add(identity)
        with open(url, "rb") as file:
            yield file
    else:
        with tempfile.TemporaryFile(prefix="regress-shard-") as spool:
            check_shard(url, size, sha256, copy_to=spool)
            spool.seek(0)
            yield spool


def iter_shard(
    url: str, expected: int | None = None, size: int | None = None, sha256: str | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) of each sample of a shard (a path or a WebDataset URL such as `pipe:...`), in order.

    With the manifest's `size` and `sha256` the whole shard is verified before its first sample is given
    out (`open_shard`). Errors name the shard and the sample where reading stopped; `expected` (the
    manifest's count) turns a shard that ends early at a member boundary into an error too.
    """
    key, members, count = None, {}, 0
    try:
        with open_shard(url, size, sha256) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                member_key, _, member = info.name.partition(".")
                if member_key != key and key is not None:
                    yield _complete(url, key, members)
                    count, members = count + 1, {}
                key = member_key
                members[member] = tar.extractfile(info).read() if info.isfile() else b""
    except (tarfile.TarError, EOFError, OSError) as error:
        where = f"in sample {key}" if key is not None else "at its start"
        raise ShardReadError(f"{url}: corrupt or truncated {where} after {count} complete samples ({error})") from error
    if key is not None:
        yield _complete(url, key, members)
        count += 1
    if expected is not None and count != expected:
        raise ShardReadError(f"{url}: holds {count} samples, its manifest says {expected}: truncated or replaced; regenerate it")


def _complete(url: str, key: str, members: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    if "meta.json" not in members:
        raise ShardReadError(f"{url}: sample {key} is incomplete (members {sorted(members)}, no meta.json)")
    return key, members
