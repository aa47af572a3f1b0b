"""The torch.compile cache file: written from what this process compiled, preloaded by the next."""

from __future__ import annotations

import pytest
import torch

from regress.runtime import load_compile_cache, save_compile_cache


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
