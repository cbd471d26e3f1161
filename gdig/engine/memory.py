"""How much memory a device has free, and the budget rules the stages follow and the plan predicts with: the
automatic budgets, whether the curvature pass's captures are kept, the seeds' rank."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from gdig.hessians import hessian as approximation

T = TypeVar("T")


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


def local_processes() -> int:
    """How many processes of this job share this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def usable_memory_mb(device: torch.device, limit_gb: float | None) -> int:
    """What this process may still take, in MiB: the free memory, or with a limit on the job's memory
    (--memory-gb) the limit less what the process holds (the GPU's allocated memory on a GPU), whichever is
    smaller; on a CPU, its share of both among the job's processes on this machine (as memory_for_plan)."""
    share = local_processes() if device.type != "cuda" else 1
    free = free_memory_mb(device) // share
    if limit_gb is None:
        return free
    from gdig.engine.measure import resident_bytes

    held = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_bytes()
    return max(0, min(free, int(limit_gb * 1024 / share - held / 2**20)))


def memory_for_plan(
    device: torch.device, memory_gb: float | None, limit_gb: float | None = None, processes: int = 1
) -> float:
    """Bytes a job's plan may use: `memory_gb` (--plan-memory-gb, another machine's), else the GPU's total or this
    machine's available memory plus what this process holds, at most the job's limit (--memory-gb). Per process
    of `processes` (torchrun): a GPU each, or on a CPU an equal share of the machine's and the limit."""
    share = processes if device.type != "cuda" else 1
    if memory_gb is not None:
        return memory_gb * 2**30 / share
    if device.type == "cuda" and not torch.cuda.is_available():
        if limit_gb is None:
            raise ValueError("no CUDA GPU here to plan for: give its memory with --plan-memory-gb")
        return limit_gb * 2**30
    if device.type == "cuda":
        here = float(torch.cuda.mem_get_info(device)[1])
    else:
        from gdig.engine.measure import resident_bytes

        here = float(free_memory_mb(device)) * 2**20 / share + resident_bytes()  # the others' growth shares it
    return here if limit_gb is None else min(here, limit_gb * 2**30 / share)


AUTO_BUDGET_CAP_MB = 8192
SEED_WORK_BYTES = 1 << 30  # captured a and g of one chunk of seeds
SEED_BLOCK_BYTES = 1 << 27  # one block of seed columns' dense gradients, preconditioned together
# What preconditioning a block holds at once, in blocks (rotated, scaled, whitened, their products, the truncation
# error's float64 copy: 1.1 GiB measured for a 1B model's 8,192 x 2,048 projection, 128 MiB blocks), beside two
# of the module's eigenvalue matrices (Lambda + lambda and its square root)
SEED_BLOCK_COPIES = 8


def column_blocks(n_columns: int, d_out: int, d_in: int) -> list[slice]:
    """Seed columns in blocks of at most SEED_BLOCK_BYTES of float32 gradients (at least one column each), so
    that the seed stage's dense work per module stays a few blocks whatever the number of seeds (a 1B model's
    8,192 x 2,048 projection is 64 MiB a column)."""
    step = max(1, SEED_BLOCK_BYTES // (4 * d_out * d_in))
    return [slice(i, min(i + step, n_columns)) for i in range(0, n_columns, step)]


def budget_mb(setting: float | None, free_mb: float, share: int) -> float:
    """A memory budget in MiB: the setting when given, else 1/share of the free memory, at most 8 GiB."""
    return setting if setting is not None else min(AUTO_BUDGET_CAP_MB, free_mb // share)


def captures_reusable(hessian: str, n_fit: int, n_candidates: int) -> bool:
    """Whether keeping the curvature fit's captures pays: a second pass of the fit replays them (EK-FAC's), or
    scoring meets the same batches (the fit set is every candidate)."""
    passes = approximation(hessian).passes
    return bool(passes) and (len(passes) > 1 or n_fit == n_candidates)


def seed_rank(dims: dict[str, tuple[int, int]], n_columns: int, budget_bytes: float) -> int | None:
    """None (dense) when every seed column fits `budget_bytes`, else the largest common rank that fits (>= 1);
    a rank-r module costs r (d_in + d_out) numbers per column instead of d_in d_out."""
    if 4 * n_columns * sum(d_in * d_out for d_in, d_out in dims.values()) <= budget_bytes:
        return None
    per_rank = 4 * n_columns * sum(d_in + d_out for d_in, d_out in dims.values())
    return max(1, int(budget_bytes // per_rank))


def keeps_dense(rank: int | None, d_in: int, d_out: int) -> bool:
    """Whether a module's seeds stay dense at this rank: no rank, or one that covers the smaller side."""
    return rank is None or rank >= min(d_in, d_out)


def captures_fit(
    lengths: list[int], dims: list[tuple[int, int]], batch_size: int, by_tokens: bool, budget_mb: float
) -> bool:
    """Whether every batch's kept capture fits in `budget_mb` (estimated from the padded lengths in the batches'
    order, with a token budget each example alone; modules given as (d_in, d_out)), with 10% to spare."""
    return 1.1 * kept_capture_bytes(lengths, dims, batch_size, by_tokens) <= budget_mb * 2**20


def kept_capture_bytes(lengths: list[int], dims: list[tuple[int, int]], batch_size: int, by_tokens: bool) -> int:
    """The bytes captures_fit counts: batches of batch_size consecutive lengths (one example each by tokens)."""
    step = 1 if by_tokens else batch_size
    shapes = [(len(lengths[i : i + step]), max(lengths[i : i + step])) for i in range(0, len(lengths), step)]
    return int(capture_bytes(shapes, dims).sum())


def capture_bytes(shapes: list[tuple[int, int]], dims: list[tuple[int, int]], part: str = "kept") -> np.ndarray:
    """Bytes per batch, given as (examples, padded length), of the modules given as (d_in, d_out), float32:
    "kept", a kept capture (hooks.Captured.compact: per module and example its per-example gradient, d_in d_out,
    or its tokens, T (d_in + d_out), whichever is smaller, hooks.keeps_gradient); "gradients", the per-example
    gradients a batch forms (the modules that keep them); "replaced", those modules' tokens."""
    if not shapes or not dims:
        return np.zeros(len(shapes), np.int64)
    n, width = (np.array(x, np.int64)[:, None] for x in zip(*shapes, strict=True))
    d_in, d_out = (np.array(x, np.int64)[None, :] for x in zip(*dims, strict=True))
    grad, tokens = d_in * d_out, width * (d_in + d_out)
    per_example = {
        "kept": np.minimum(grad, tokens),
        "gradients": np.where(grad < tokens, grad, 0),
        "replaced": np.where(grad < tokens, tokens, 0),
    }[part]
    return 4 * n[:, 0] * per_example.sum(1)


def release_freed_memory() -> None:
    """Give memory the process has freed back to the system (glibc's malloc_trim; nothing elsewhere). Between
    stages: glibc keeps freed blocks of a few MiB (a fit's kept captures) resident, so a later stage's own
    allocations would add to a peak the process no longer uses."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once (find_library runs a helper process), or None."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def module_groups(dims: list[tuple[int, int]], parts: int) -> list[range]:
    """At most `parts` groups of consecutive modules (their sums then keep the modules' order), given each
    module's (d_in, d_out), balanced by the size of its factors, d_in^2 + d_out^2 + d_in d_out; never empty.
    What --module-partitions runs and plans by."""
    parts = max(1, min(parts, len(dims)))
    cumulative = np.cumsum([d_in**2 + d_out**2 + d_in * d_out for d_in, d_out in dims])
    bounds = [0]
    for k in range(1, parts):
        cut = int(np.searchsorted(cumulative, k * cumulative[-1] / parts)) + 1
        bounds.append(min(max(cut, bounds[-1] + 1), len(dims) - (parts - k)))
    bounds.append(len(dims))
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def tracked_groups(tracked: Sequence[T], parts: int) -> list[list[T]]:
    """A run's module groups (--module-partitions): its tracked modules (with d_in, d_out) in module_groups."""
    return [list(tracked[r.start : r.stop]) for r in module_groups([(t.d_in, t.d_out) for t in tracked], parts)]
