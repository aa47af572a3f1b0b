"""The one atomic writer and the one hasher: files appear whole or not at all, hashes are SHA-256 of the bytes."""

from __future__ import annotations

import hashlib
import json

import pytest

from regress.store.files import AtomicFile, file_sha256, stale_partials, tree_sha256, write_atomic, write_folder, write_json


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_write_json_sorts_keys_and_ends_with_a_newline(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": [2]})
    assert (tmp_path / "m.json").read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'


def test_an_atomic_file_appears_on_commit_and_never_when_discarded(tmp_path):
    kept, dropped = AtomicFile(tmp_path / "kept"), AtomicFile(tmp_path / "dropped")
    for target in (kept, dropped):
        target.file.write(b"bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dropped.partial", "kept.partial"]
    kept.commit()
    dropped.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and (tmp_path / "kept").read_bytes() == b"bytes"


def test_stale_partials_are_a_files_own_temporaries_and_no_others(tmp_path):
    names = ["a.tar", "a.tar.partial", "a.tar.12.partial", "a.tar.json.12.partial", "a.tar.json.partial", "a.tarx.partial", "a.tar.x1.partial"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in stale_partials(tmp_path, {"a.tar"})] == ["a.tar.12.partial", "a.tar.partial"]
    assert [p.name for p in stale_partials(tmp_path, {"a.tar.json"})] == ["a.tar.json.12.partial", "a.tar.json.partial"]
    assert len(stale_partials(tmp_path, {"a.tar", "a.tar.json"})) == 4 and stale_partials(tmp_path, {"b.tar"}) == []


def test_write_folder_renames_a_complete_folder_into_place(tmp_path):
    (tmp_path / "record.partial").mkdir()  # left by a killed run
    (tmp_path / "record.partial" / "stale").write_bytes(b"x")
    write_folder(tmp_path / "record", {"meta.json": json.dumps({"k": 1}).encode(), "w.npy": b"\x93NUMPY"})
    assert [p.name for p in tmp_path.iterdir()] == ["record"]
    assert sorted(p.name for p in (tmp_path / "record").iterdir()) == ["meta.json", "w.npy"]
    write_folder(tmp_path / "record", {"meta.json": b"{}"})  # written again: the new folder replaces the old one whole
    assert [p.name for p in tmp_path.iterdir()] == ["record"] and [p.name for p in (tmp_path / "record").iterdir()] == ["meta.json"]


def test_hashes_are_sha256_of_the_bytes_and_of_a_folders_names_and_hashes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"alpha")
    (tmp_path / "sub" / "b").write_bytes(b"beta")
    assert file_sha256(tmp_path / "a") == hashlib.sha256(b"alpha").hexdigest() == tree_sha256(tmp_path / "a")
    lines = f"a:{hashlib.sha256(b'alpha').hexdigest()}\nsub/b:{hashlib.sha256(b'beta').hexdigest()}\n"
    assert tree_sha256(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()


@pytest.mark.parametrize("content", [b"", b"x" * (5 << 20)])
def test_file_hash_reads_in_pieces_like_one_read(tmp_path, content):
    (tmp_path / "f").write_bytes(content)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(content).hexdigest()
