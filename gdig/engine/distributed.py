"""Many processes, one run: `torchrun --nproc-per-node N -m gdig score ...` (torch.distributed; NCCL on GPUs,
gloo on CPUs). A World is this process's place in the job; its collectives move tensors only (never pickles),
wait while the caller keeps its status fresh, and turn a peer's failure or a timeout into one clear error.

Work is split by cost (tokens), not by count: `share` gives each rank a balanced, deterministic part of a list
whose order and content do not depend on the world size, so a run resumes with any number of processes.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from gdig.cancel import Cancelled

DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long for the slowest rank (GDIG_COLLECTIVE_TIMEOUT)


class WorldError(RuntimeError):
    """Another process of the job failed, was killed, or did not reach a collective in time."""


def share(costs: Sequence[float], n: int) -> list[list[int]]:
    """Positions of `costs` split into n parts of nearly equal total cost (largest first to the lightest part,
    ties to the lowest rank); each part keeps the original order. Deterministic."""
    parts: list[list[int]] = [[] for _ in range(n)]
    heap = [(0.0, r) for r in range(n)]
    for pos in sorted(range(len(costs)), key=lambda p: (-costs[p], p)):
        load, r = heapq.heappop(heap)
        parts[r].append(pos)
        heapq.heappush(heap, (load + float(costs[pos]), r))
    return [sorted(p) for p in parts]


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes (one process: rank 0 of 1, and every collective is a no-op)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    traffic: dict[str, int] = field(default_factory=dict, compare=False)  # bytes each collective moved, by purpose

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's final files, config.json and status.json."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    def mine(self, costs: Sequence[float]) -> list[int]:
        """This rank's positions of `costs` (see share)."""
        return share(costs, self.size)[self.rank]

    def owners(self, costs: Sequence[float]) -> list[int]:
        """The rank that gets each position of `costs`."""
        owner = [0] * len(costs)
        for r, part in enumerate(share(costs, self.size)):
            for pos in part:
                owner[pos] = r
        return owner

    def all_reduce(self, tensors: Iterable, what: str, while_waiting: Callable[[], None] | None = None) -> None:
        """Sum each tensor over the ranks, in place (one tensor at a time: no buffer of them all)."""
        if self.active:
            import torch.distributed as dist

            for t in tensors:
                _check_contiguous(t, what)
                self._count(what, t)
                self._wait(dist.all_reduce(t, async_op=True), what, while_waiting)

    def all_reduce_min(self, value: int, what: str) -> int:
        """The smallest of every rank's value (decisions that must agree, such as a memory budget's rank)."""
        if not self.active:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._wait(dist.all_reduce(t, op=dist.ReduceOp.MIN, async_op=True), what, None)
        return int(t.item())

    def broadcast(self, tensors: Iterable, src: int, what: str) -> None:
        """Every rank's tensors replaced by rank `src`'s, in place (contiguous tensors, same shapes everywhere)."""
        if self.active:
            import torch.distributed as dist

            for t in tensors:
                _check_contiguous(t, what)
                self._count(what, t)
                self._wait(dist.broadcast(t, src, async_op=True), what, None)

    def barrier(self, what: str, while_waiting: Callable[[], None] | None = None) -> None:
        """Wait until every rank gets here (calling `while_waiting` every half second meanwhile)."""
        if self.active:
            import torch
            import torch.distributed as dist

            self._wait(dist.all_reduce(torch.zeros(1, device=self.device), async_op=True), what, while_waiting)

    @property
    def device(self):
        """Where this rank's collectives' small tensors live (NCCL needs them on the GPU)."""
        import torch
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _count(self, what: str, t) -> None:
        self.traffic[what] = self.traffic.get(what, 0) + t.numel() * t.element_size()

    def _wait(self, work, what: str, while_waiting: Callable[[], None] | None) -> None:
        deadline, pause, last = time.time() + self.timeout_s, 0.0005, time.time()
        try:
            while not work.is_completed():
                if time.time() > deadline:
                    raise TimeoutError(f"no answer in {self.timeout_s:.0f} s")
                if while_waiting is not None and time.time() - last >= 0.5:
                    while_waiting()
                    last = time.time()
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            work.wait()
        except Cancelled:
            raise
        except (RuntimeError, TimeoutError) as e:
            raise WorldError(
                f"rank {self.rank} of {self.size}: {what}: another process of this job failed, was killed, or did "
                f"not arrive within the collective timeout ({self.timeout_s:.0f} s, GDIG_COLLECTIVE_TIMEOUT); its "
                f"own error comes first in status.json and torchrun's output ({type(e).__name__}: {e})"
            ) from None


SINGLE = World()


def _check_contiguous(t, what: str) -> None:
    """A collective moves a tensor's memory as it lies: another layout on another rank would scramble it."""
    if not t.is_contiguous():
        raise ValueError(f"{what}: a tensor of shape {tuple(t.shape)} is not contiguous")


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_world(device: str) -> tuple[World, str]:
    """Join the job's process group when launched as one of several (NCCL when this rank has a GPU, else gloo);
    returns the World and this rank's device (`cuda` becomes `cuda:LOCAL_RANK`)."""
    if not launched():
        return SINGLE, device
    import torch
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = float(os.environ.get("GDIG_COLLECTIVE_TIMEOUT", DEFAULT_TIMEOUT_S))
    gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    if gpu:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo", timeout=timedelta(seconds=timeout))
    return World(rank, size, local, timeout), device


def leave_world() -> None:
    """Tear the process group down (the end of a job)."""
    if launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
