"""Facts of the running process, in one place: which device it uses, whether its kernels are deterministic,
its rank and the number of ranks."""

from __future__ import annotations

import os

import torch
import webdataset as wds


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: this rank's GPU (torchrun's LOCAL_RANK, else the first) when there is one, else the CPU; any other
    name as torch reads it (`cpu`, `cuda:1`)."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def deterministic_kernels(device: torch.device) -> torch.device:
    """Ask CUDA for deterministic kernels (cuDNN, cuBLAS), so a rerun writes the same bytes."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of ranks: torchrun's RANK and WORLD_SIZE, else an initialized
    torch.distributed, else (0, 1); WebDataset's rule, so shard splits and this agree."""
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}; check the RANK and WORLD_SIZE variables")
    return rank, world_size


def synchronize(device: torch.device) -> None:
    """Wait until the device finished its queued work, so a wall-clock time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
