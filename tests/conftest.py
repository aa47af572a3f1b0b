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


@pytest.fixture(autouse=True)
def _cpu_threads():
    """Keep tests to the 2 cores CI has, whatever the machine."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
