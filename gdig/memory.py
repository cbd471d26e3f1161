"""How much memory a device has free, and whether the curvature pass's captures fit in the reuse budget."""

from __future__ import annotations

import os

import torch


def free_memory_mb(device: torch.device) -> int:
    """Memory that can be used without swapping (MemAvailable on Linux, free memory on a GPU), in MiB."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 2**20)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def captures_fit(lengths: list[int], per_token_bytes: int, batch_size: int, by_tokens: bool, budget_mb: float) -> bool:
    """Whether every batch's captured a and g fit in `budget_mb` (estimated from the padded lengths, in the
    batches' order; with a token budget each example counts alone), with 10% to spare."""
    step = 1 if by_tokens else batch_size
    padded = sum(max(lengths[i : i + step]) * len(lengths[i : i + step]) for i in range(0, len(lengths), step))
    return 1.1 * padded * per_token_bytes <= budget_mb * 2**20
