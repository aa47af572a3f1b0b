"""Facts of the running process, in one place: which device it uses, whether its kernels are deterministic,
its rank and the number of ranks, and the torch.compile cache it starts from."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
import webdataset as wds

from regress.store.files import write_atomic
from regress.store.locks import hold_folder


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: this rank's GPU (torchrun's LOCAL_RANK, else the first; the only one when the process sees one)
    when there is one, else the CPU; any other name as torch reads it (`cpu`, `cuda:1`)."""
    if device != "auto":
        try:
            chosen = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device {device!r} is not a torch device: give auto, cpu, cuda or cuda:N") from error
        if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
            seen = torch.cuda.device_count()
            raise ValueError(f"device {device!r}: {'no CUDA GPU is visible' if not seen else f'{seen} CUDA GPUs are visible'} here; "
                             "give auto (a GPU when there is one, else the CPU) or cpu")  # fmt: skip
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.device_count() > 1 else 0)
    return torch.device("cpu")


def own_gpu_only() -> None:
    """Under torchrun with several ranks on this machine, let this process see only its own GPU, before CUDA starts.

    Every rank then runs on cuda:0, so what torch.compile cached on one rank (a compile cache file),
    keyed by device index, fits the others. Only for jobs without collectives between ranks (generate).
    """
    local, ranks = os.environ.get("LOCAL_RANK"), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if local is None or ranks < 2 or torch.cuda.is_initialized():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # torch counts GPUs through NVML here: CUDA does not start
    gpus = visible.split(",") if visible is not None else [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) > 1 and int(local) < len(gpus):  # fewer GPUs than ranks: leave them shared, as before
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[int(local)]


def deterministic_kernels(device: torch.device) -> torch.device:
    """Ask CUDA for deterministic kernels (cuDNN, cuBLAS, inductor's reductions), so a rerun writes the same bytes.

    Not `torch.use_deterministic_algorithms`: it also turns scatters with unique indices, which are
    deterministic already (the mesh march's), into sorts: EG3D at batch 32 rendered 399 images/s with it,
    509 without, and reruns still wrote the same bytes (docs/benchmarks.md).
    """
    if device.type == "cuda":
        import torch._inductor.config

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch._inductor.config.deterministic = True  # reduction configurations fixed, not chosen by timing
    return device


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of ranks: torchrun's RANK and WORLD_SIZE, else an initialized
    torch.distributed, else (0, 1); WebDataset's rule, so shard splits and this agree."""
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}; check the RANK and WORLD_SIZE variables")
    return rank, world_size


def starts_the_run() -> bool:
    """Whether this process is the one a user started, not a rank another launches: rank 0 under torchrun (RANK),
    and neither a process Lightning's DDP launcher starts for another GPU (LOCAL_RANK > 0) nor another node's."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return int(rank) == 0 and int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))) == 0


def hold_output(folder: Path, job: str, what: str, advice: str) -> contextlib.AbstractContextManager[None]:
    """`store.locks.hold_folder` for the process that starts the run; the ranks it launches write under its hold."""
    return hold_folder(folder, job, what, advice) if starts_the_run() else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait until the device finished its queued work, so a wall-clock time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


T = TypeVar("T")


def timed(run: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """The result of `run` and its wall time, from an idle device until the device finished."""
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - start


def load_compile_cache(path: str | Path | None) -> bool:
    """Preload torch.compile's caches (Inductor, Triton, autotuning, AOTAutograd) from a file that
    `save_compile_cache` wrote, on this machine or on another with the same torch, Triton and GPU:
    a new machine then skips most of the compilation. False when there is no such file yet."""
    if path is None or not Path(path).is_file():
        return False
    refused = f"{path} is not a torch.compile cache this torch can read; delete it, and the run writes a new one"
    quiet = logging.getLogger("torch.compiler._cache")  # it logs a traceback before returning None
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        loaded = torch.compiler.load_cache_artifacts(Path(path).read_bytes())
    except Exception as error:
        raise ValueError(f"{refused} ({error})") from error
    finally:
        quiet.setLevel(level)
    if loaded is None:  # a corrupt or foreign file: torch logs why and returns None
        raise ValueError(refused)
    return True


def save_compile_cache(path: str | Path) -> int:
    """Write what torch.compile compiled in this process to `path` (atomically); the bytes written, 0 for none."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None or not artifacts[0]:
        return 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), artifacts[0])
    return len(artifacts[0])
