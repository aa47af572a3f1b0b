"""All-reduce time and bus bandwidth between the GPUs of one machine, for gradient-sized tensors (NCCL).

    python -m torch.distributed.run --standalone --nproc-per-node 2 scripts/bench_allreduce.py
    NCCL_DEBUG=INFO python -m torch.distributed.run ... | grep via      # the transport NCCL chose (P2P, SHM)

Says whether DDP's gradient exchange can explain a multi-GPU fit's loss of speed: the default sizes
are a ResNet-50's 25.6M gradients and half of them, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numels", type=int, nargs="+", default=[25_600_000, 12_800_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    if rank == 0:
        print(f"{torch.cuda.get_device_name()} x {dist.get_world_size()}; peer access 0 -> 1: {torch.cuda.can_device_access_peer(0, 1)}")
    for numel in args.numels:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.ones(numel, dtype=dtype, device="cuda")
            for _ in range(3):
                dist.all_reduce(x)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.repeats):
                dist.all_reduce(x)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - start) / args.repeats * 1e3
            size = numel * x.element_size()
            busbw = 2 * (dist.get_world_size() - 1) / dist.get_world_size() * size / ms / 1e6  # NCCL's bus bandwidth, GB/s
            if rank == 0:
                print(f"{size / 1e6:.0f} MB {dtype}: {ms:.2f} ms, bus {busbw:.1f} GB/s")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
