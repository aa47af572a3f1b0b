"""Shared test set-up: the EG3D reference fixture (skips when absent), 2 CPU threads, GPU tests skipped without CUDA."""

from __future__ import annotations

import os

# Sleeping OpenMP workers: spinning ones starve each other on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parent.parent
EG3D_FIXTURE = Path(os.environ.get("REGRESS_EG3D_FIXTURE", REPO.parent / "shared" / "fixtures" / "eg3d-reference"))


@pytest.fixture(scope="session")
def eg3d_fixture_dir() -> Path:
    """The upstream-format EG3D reference fixture (network.pkl, reference.npz); skip when absent."""
    if not (EG3D_FIXTURE / "network.pkl").is_file():
        pytest.skip(f"EG3D reference fixture not found at {EG3D_FIXTURE} (set REGRESS_EG3D_FIXTURE)")
    return EG3D_FIXTURE


def _threads_for(node) -> int:
    """2 threads (what CI has), or 1 in modules marked `single_thread` (tiny tensors, where a second thread only syncs)."""
    return 1 if node.get_closest_marker("single_thread") else min(2, os.cpu_count() or 1)


@pytest.fixture(autouse=True, scope="module")
def _cpu_threads_for_module_fixtures(request):
    torch.set_num_threads(_threads_for(request.node))
    yield


@pytest.fixture(autouse=True)
def _cpu_threads(request):
    torch.set_num_threads(_threads_for(request.node))
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (run on the device machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword: a parameter id "gpu" is none
            item.add_marker(skip_gpu)
