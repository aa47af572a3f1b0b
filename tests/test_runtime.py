"""Facts of the process: the torch.compile cache file (written from what it compiled, preloaded by the next), each rank's
own GPU, and the deterministic kernels generate asks for."""

from __future__ import annotations

import os

import pytest
import torch
import torch._inductor.config

from regress.runtime import deterministic_kernels, load_compile_cache, own_gpu_only, save_compile_cache


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


def test_deterministic_kernels_fix_cudnn_and_inductor_but_leave_the_global_switch_off(monkeypatch):
    """The switch would turn the mesh march's unique-index scatter into a sort: 399 against 509 images/s (docs/benchmarks.md)."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch._inductor.config, "deterministic", False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so the variable the call sets is undone after the test
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert deterministic_kernels(torch.device("cpu")) == torch.device("cpu")
    assert torch.backends.cudnn.benchmark and not torch._inductor.config.deterministic  # nothing to fix on the CPU
    deterministic_kernels(torch.device("cuda"))  # sets flags only: no CUDA call, so it runs without a GPU
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch._inductor.config.deterministic and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
