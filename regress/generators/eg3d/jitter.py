"""Per-seed uniform numbers made on the device by a counter-based hash of (seed, index).

The renderer's training jitter needs 1.6 million numbers per 128² image; drawing them on the
CPU and copying them over costs more than the render. A keyed integer hash gives the same
numbers on any device, in any batch, for a seed, with no state and no host work per number.
"""

from __future__ import annotations

from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
# Multipliers below 2**31, so that a 32-bit value times one is exact in int64 (hash-prospector's
# two-round xorshift-multiply hash, 0x21f0aaad / 0x735a2d97, shifts 16 / 15 / 15).
ROUND = ((16, 0x21F0AAAD), (15, 0x735A2D97), (15, None))


def splitmix64(x: int) -> int:
    """The SplitMix64 finalizer on a Python int: a well-mixed 64-bit key from any 64-bit value."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def seed_keys(seeds: Sequence[int], stream: int) -> torch.Tensor:
    """(N, 2) int64 32-bit keys of (seed, stream); seeds are any non-negative integers below 2**64."""
    keys = []
    for seed in seeds:
        if not 0 <= int(seed) <= MASK64:
            raise ValueError(f"seed {seed} is outside [0, 2**64); seeds must be non-negative 64-bit integers")
        key = splitmix64(int(seed) ^ splitmix64(stream))
        keys.append((key & MASK32, key >> 32))
    return torch.tensor(keys, dtype=torch.int64)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash of int64 values in [0, 2**32), exact in int64 on every device."""
    for shift, multiplier in ROUND:
        x = x ^ (x >> shift)
        if multiplier is not None:
            x = (x * multiplier) & MASK32
    return x


def keyed_uniform(keys: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) float32 in [0, 1) from `seed_keys` (N, 2) on their device: 24 random bits each."""
    if not 0 < size <= MASK32 + 1:
        raise ValueError(f"size must be in [1, 2**32], got {size}")
    index = torch.arange(size, dtype=torch.int64, device=keys.device)
    bits = hash32(hash32(index ^ keys[:, :1]) ^ keys[:, 1:])
    return (bits >> 8).float() * 2.0**-24

