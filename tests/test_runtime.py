"""Facts of the process: the torch.compile cache file (written from what it compiled, preloaded by the next), and each rank's own GPU."""

from __future__ import annotations

import os

import pytest
import torch

from regress.runtime import load_compile_cache, own_gpu_only, save_compile_cache


def test_a_compile_cache_round_trips_and_a_foreign_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold machine
    cache = tmp_path / "runs" / "compile.bin"
    assert not load_compile_cache(cache) and not load_compile_cache(None)  # nothing to load yet: the run writes it
    compiled = torch.compile(lambda x: (x.sin() * 3).cumsum(0))
    x = torch.linspace(0, 1, 16)
    torch.testing.assert_close(compiled(x), (x.sin() * 3).cumsum(0))
    written = save_compile_cache(cache)
    assert written > 0 and cache.stat().st_size == written and list(cache.parent.iterdir()) == [cache]  # no partial left
    assert load_compile_cache(cache)
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"not a cache")
    with pytest.raises(ValueError, match="is not a torch.compile cache this torch can read"):
        load_compile_cache(foreign)


@pytest.mark.parametrize(
    ("local_rank", "local_ranks", "visible", "seen"),
    [
        ("1", "2", "3,5", "5"),  # rank 1 of 2 takes the second of the GPUs it was given
        ("0", "2", "3,5", "3"),
        ("1", "2", "4", "4"),  # fewer GPUs than ranks: left shared
        ("0", "1", "3,5", "3,5"),  # one rank: nothing to split
        ("1", "2", "", ""),  # no GPU stays no GPU
    ],
)
def test_each_local_rank_sees_only_its_own_gpu(monkeypatch, local_rank, local_ranks, visible, seen):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    own_gpu_only()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == seen


def test_outside_torchrun_the_visible_gpus_stay(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    own_gpu_only()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
