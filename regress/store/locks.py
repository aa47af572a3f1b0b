"""One writer per output folder: a second job that would write it at the same time is refused in one line naming the
first, and a lock left by a killed process is taken over, never a reason to refuse forever.

A holder is a file `.regress-locks/HOST-PID-N.json` in the folder that describes its run and that its process keeps
locked (flock) while it writes: the kernel lets go when the process ends, however it ends, so a holder file nobody
locks is stale and removed. Holders of one `share` (one shard set's ranks) may hold a folder together unless they
have the same `part` (a rank); any other pair excludes each other. The folder `.regress-locks/`, itself locked while a
holder is checked, added or removed, goes with its last holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator

LOCKS = ".regress-locks"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock: the folder is used unlocked
_holder_numbers = itertools.count()
_held: dict[Path, IO[str]] = {}  # this process's holder files, open (and so locked) while it holds their folders


class FolderInUse(ValueError):
    """Another live process holds the folder: the job refuses it in one line (exit status 1)."""


def _conflict(mine: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Whether two holders exclude each other: always, but for holders of one share with different parts."""
    return mine["share"] is None or mine["share"] != theirs.get("share") or mine["part"] == theirs.get("part")


@contextlib.contextmanager
def _locked_list(folder: Path) -> Iterator[Path]:
    """`folder/.regress-locks/`, created if needed and locked by this process while the block runs."""
    locks = folder / LOCKS
    while True:
        locks.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(locks, os.O_RDONLY)
        except FileNotFoundError:  # its last holder removed it between the two lines
            continue
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # held for the few milliseconds of a check
        with contextlib.suppress(FileNotFoundError):
            if os.stat(locks).st_ino == os.fstat(descriptor).st_ino:
                break
        os.close(descriptor)  # removed (and maybe made again) while this process waited: lock the one there now
    try:
        yield locks
    finally:
        os.close(descriptor)


def _live_holder(path: Path, job: str) -> dict[str, Any] | None:
    """The run a holder file describes while its process still holds it; None (and the file removed) when it is stale."""
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return json.loads(handle.read())
    except FileNotFoundError:
        return None
    with contextlib.suppress(ValueError, OSError):
        stale = json.loads(path.read_text())
        print(f"{job}: taking over the lock of {stale['job']} (pid {stale['pid']} on {stale['host']}), which ended without releasing "
              f"{path.parent.parent}", file=sys.stderr)  # fmt: skip
    path.unlink(missing_ok=True)
    return None


def _refusal(folder: Path, holder: dict[str, Any], advice: str) -> FolderInUse:
    return FolderInUse(f"another {holder['job']} is {holder['what']} in {folder} (pid {holder['pid']} on {holder['host']}, "
                       f"since {holder['since']}); {advice}")  # fmt: skip


@contextlib.contextmanager
def hold_folder(folder: Path, job: str, what: str, advice: str, share: str | None = None, part: str | None = None) -> Iterator[None]:
    """Hold `folder` while the block runs; FolderInUse, naming the holder and saying what to do (`advice`), while a live
    process holds it that this one may not share it with.

    Args:
        job: the command, as the refusal of a second one names it (`python -m regress.generate`)
        what: what it does there, as in `another JOB is WHAT in FOLDER` (`writing the 'synth' shards of rank 0`)
        share: holders with the same share may hold the folder together (the ranks of one shard set); None: alone
        part: within a share, holders of the same part exclude each other (two processes writing one rank's shards)
    """
    mine = {"job": job, "what": what, "share": share, "part": part, "pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    created = not Path(folder).exists()  # removed again when the job leaves it empty (it failed before writing)
    try:
        path = _add_holder(Path(folder), mine, advice)
    except OSError as error:
        if error.errno not in NO_LOCKS:
            raise
        print(f"{job}: {folder} cannot be locked on this file system ({error.strerror}); make sure no other job writes there", file=sys.stderr)
        path = None
    try:
        yield
    finally:
        if path is not None:
            with _locked_list(Path(folder)) as locks:
                path.unlink(missing_ok=True)
                _held.pop(path).close()
                with contextlib.suppress(OSError):  # other holders' files are still there
                    locks.rmdir()
        if created:
            with contextlib.suppress(OSError):  # it holds what the job wrote
                Path(folder).rmdir()


def _add_holder(folder: Path, mine: dict[str, Any], advice: str) -> Path:
    """This process's holder file, written and kept locked once no live holder conflicts with it."""
    with _locked_list(folder) as locks:
        for path in sorted(locks.glob("*.json")):
            holder = _live_holder(path, mine["job"])
            if holder is not None and _conflict(mine, holder):
                raise _refusal(folder, holder, advice)
        path = locks / f"{mine['host']}-{mine['pid']}-{next(_holder_numbers)}.json"
        handle = _held[path] = open(path, "w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(json.dumps(mine))
        handle.flush()
    return path
