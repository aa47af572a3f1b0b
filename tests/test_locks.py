"""One writer per output folder: a live holder in another process refuses a second writer by name, the ranks of one
set share, and a killed holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regress.store.locks import LOCKS, FolderInUse, hold_folder

REPO = Path(__file__).resolve().parent.parent
ADVICE = "let it finish, or use another output folder"


def holding(folder: Path, what: str, share: str | None = None, part: str | None = None) -> subprocess.Popen:
    """A child process that holds `folder` until it is killed; returned once it holds it."""
    code = (
        "import sys, time; from pathlib import Path; from regress.store.locks import hold_folder\n"
        f"with hold_folder(Path(sys.argv[1]), 'python -m regress.generate', {what!r}, 'x', {share!r}, {part!r}):\n"
        "    print('held', flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout.readline() == "held\n"
    return child


def wait_for_holder(folder: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until a process has written its holder file in `folder` (it holds the folder), or has ended."""
    deadline = time.monotonic() + timeout
    while not list((folder / LOCKS).glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, f"it ended before it held the folder: {process.stderr.read().decode() if process.stderr else ''}"


def test_a_live_holder_refuses_another_writer_by_name_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys):
    child = holding(tmp_path, "writing the 'a' shards of rank 0")
    try:
        with pytest.raises(FolderInUse, match=rf"^another python -m regress.generate is writing the 'a' shards of rank 0 in {tmp_path} "
                                              rf"\(pid {child.pid} on [^,]+, since [0-9: -]+\); {ADVICE}$"):  # fmt: skip
            with hold_folder(tmp_path, "python -m regress.evaluate pairs", "building the pairs set", ADVICE):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(list((tmp_path / LOCKS).glob("*.json"))) == 1  # the killed holder's file is still there
    with hold_folder(tmp_path, "python -m regress.evaluate pairs", "building the pairs set", ADVICE):
        assert len(list((tmp_path / LOCKS).glob("*.json"))) == 1  # ours
    assert f"taking over the lock of python -m regress.generate (pid {child.pid} on " in capsys.readouterr().err
    assert not (tmp_path / LOCKS).exists()  # the last holder leaves no trace


def test_the_ranks_of_one_set_share_a_folder_but_not_a_rank(tmp_path):
    child = holding(tmp_path, "writing the 'a' shards of rank 0", share="set-a/2", part="0")
    try:
        with hold_folder(tmp_path, "python -m regress.generate", "writing the 'a' shards of rank 1", ADVICE, share="set-a/2", part="1"):
            pass
        for share, part in (("set-a/2", "0"), ("set-a/1", "0"), ("set-b/2", "1"), (None, None)):  # its rank; another layout or set; alone
            with pytest.raises(FolderInUse, match="is writing the 'a' shards of rank 0 in"):
                with hold_folder(tmp_path, "python -m regress.generate", "writing", ADVICE, share=share, part=part):
                    pass
    finally:
        child.kill()
        child.wait()


def test_nested_holds_of_one_process_exclude_each_other_and_release_in_order(tmp_path):
    with hold_folder(tmp_path, "python -m regress.predict", "writing predictions", ADVICE):
        with pytest.raises(FolderInUse, match=rf"pid {os.getpid()} "):
            with hold_folder(tmp_path, "python -m regress.predict", "writing predictions", ADVICE):
                pass
    with hold_folder(tmp_path, "python -m regress.predict", "writing predictions", ADVICE):
        pass
    assert not (tmp_path / LOCKS).exists()
    with hold_folder(tmp_path / "new" / "output", "python -m regress.predict", "writing predictions", ADVICE):
        assert (tmp_path / "new" / "output").is_dir()
    assert not (tmp_path / "new" / "output").exists()  # a job that wrote nothing leaves no folder behind
