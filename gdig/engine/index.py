"""The gradient index (DESIGN section 1): each candidate's whitened gradient w(z) = (F + lambda)^(-1/2) grad L(z),
projected to k dimensions, so that any seed set or query is scored against the pool with one matrix product
instead of another pass over it. This module owns the projections; scoring from the rows is gdig.engine.index_scoring.

The projection is chosen by measurement (bench/bench_index.py): a CountSketch of the whole whitened gradient by
default, a per-module Kronecker Gaussian (LoGra's) as the alternative; with k at least the whitened gradient's
dimension there is no projection at all (exact).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gdig.config import INDEX_PROJECTIONS

PROJECTIONS = INDEX_PROJECTIONS


def make_projection(kind: str, dims: dict[str, tuple[int, int]], dim: int, random_state: int, device="cpu"):
    """The index projection `kind` (PROJECTIONS) for modules of these (d_in, d_out), k = `dim`."""
    if kind not in PROJECTIONS:
        raise ValueError(f"the index projection must be one of {', '.join(PROJECTIONS)}, got {kind!r}")
    cls = CountSketchProjection if kind == "countsketch" else KroneckerProjection
    return cls(dims, dim, random_state, device)


class CountSketchProjection:
    """A CountSketch of the concatenated whitened gradient (every coordinate of every module added, with a
    random sign, into one of k buckets): unbiased, with the variance of a dense Gaussian projection, (|x|^2 |y|^2
    + <x, y>^2) / k, for any k and any module sizes, in O(coordinates) per example. The bucket and sign of a
    coordinate are a hash of its position and the run's random_state, computed where the gradient is (no stored
    table: the same cost for a 7B model's 4 billion coordinates as for an adapter's). With k at least the
    gradient's dimension it is no projection at all: every coordinate keeps its own column (exact)."""

    kind = "countsketch"
    version = 2  # of the hash: an index is only read with the hash that wrote it

    def __init__(self, dims: dict[str, tuple[int, int]], dim: int, random_state: int, device="cpu"):
        sizes = {name: d_in * d_out for name, (d_in, d_out) in dims.items()}
        self.exact = dim >= sum(sizes.values())
        self.dim = sum(sizes.values()) if self.exact else dim
        self.random_state, self.sizes = random_state, sizes
        self.offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist(), strict=True))
        self._cache: dict[str, torch.Tensor] = {}
        self._cache_left = CACHED_COORDINATES

    def hash(self, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Module `name`'s bucket (int64) and sign (+1 or -1, int64) per coordinate: splitmix64 of each
        coordinate's global position and the seed."""
        start = self.offsets[name]
        x = _splitmix64(torch.arange(start, start + self.sizes[name], device=device), self.random_state)
        return (x & 0x7FFFFFFF) % self.dim, ((x >> 40) & 1) * 2 - 1

    def slots(self, name: str, device) -> torch.Tensor:
        """Module `name`'s coordinates' slots among 2 k sums: the bucket, plus k where the sign is negative (the
        sign folded into the scatter: a quarter faster than multiplying by it first). Kept while they fit in
        CACHED_COORDINATES in all (BYTES_PER_COORDINATE each), else recomputed at each call (cheap on a GPU)."""
        if name in self._cache:
            return self._cache[name]
        bucket, sign = self.hash(name, device)
        slot = bucket + self.dim * (sign < 0)
        if self.sizes[name] <= self._cache_left:
            self._cache[name] = slot
            self._cache_left -= self.sizes[name]
        return slot

    def project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Module `name`'s whitened gradients (B, d_out, d_in) into the k columns: (B, k), to be added up."""
        flat = w.reshape(w.shape[0], -1)
        if self.exact:
            out = flat.new_zeros(w.shape[0], self.dim)
            start = self.offsets[name]
            out[:, start : start + flat.shape[1]] = flat
            return out
        slot = self.slots(name, flat.device).to(flat.device)
        # scatter_add_ along rows: 2.7x as fast on the CPU as a sparse product, 14x as index_add_ along dim 1
        sums = flat.new_zeros(w.shape[0], 2 * self.dim).scatter_add_(1, slot.expand_as(flat), flat)
        return sums[:, : self.dim] - sums[:, self.dim :]

    def empty(self, n: int, device="cpu") -> torch.Tensor:
        """Zeros for n rows of the index, to which each module's `project` is added."""
        return torch.zeros(n, self.dim, device=device)


CACHED_COORDINATES = 1 << 25  # slots kept for up to this many coordinates (256 MB): every adapter, small MLPs
BYTES_PER_COORDINATE = 8  # a kept coordinate's slot (int64, as scatter_add_ takes it)
_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit constant as torch's int64 holds it (two's complement)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _splitmix64(x: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping multiplication; logical shifts by masking): well-mixed
    64-bit hashes of the positions, reproducible on any device."""
    x = x + _signed((0x9E3779B97F4A7C15 * (seed + 1)) & _MASK64)
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _signed(0x94D049BB133111EB)
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class KroneckerProjection:
    """Fixed Gaussian projections per module, R w = P_out^T W P_in (LoGra's structure): two thin products per
    example and small matrices, but for the near rank-one gradients of short examples its error is that of a
    k_in- and a k_out-dimensional projection multiplied, far above a dense projection's (bench/README.md).
    A side small enough is kept whole (the identity); with k covering every module, no projection (exact)."""

    kind = "kronecker"
    version = 1

    def __init__(self, dims: dict[str, tuple[int, int]], dim: int, random_state: int, device="cpu"):
        self.shapes = allocate(dims, dim)
        gen = torch.Generator().manual_seed(random_state + 7919)  # apart from the sketches' stream
        self.p_out: dict[str, torch.Tensor | None] = {}
        self.p_in: dict[str, torch.Tensor | None] = {}
        self.slices: dict[str, slice] = {}
        start = 0
        for name, (d_in, d_out) in dims.items():
            k_out, k_in = self.shapes[name]
            self.p_out[name] = _gaussian(d_out, k_out, gen, device)
            self.p_in[name] = _gaussian(d_in, k_in, gen, device)
            self.slices[name] = slice(start, start + k_out * k_in)
            start += k_out * k_in
        self.dim = start
        self.exact = all(p is None for p in (*self.p_out.values(), *self.p_in.values()))

    def project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Module `name`'s whitened gradients (B, d_out, d_in) into its columns of (B, k), to be added up."""
        out = w.new_zeros(w.shape[0], self.dim)
        p_out, p_in = self.p_out[name], self.p_in[name]
        if p_in is not None:
            w = w @ p_in.to(w.device)
        if p_out is not None:
            w = p_out.T.to(w.device) @ w
        out[:, self.slices[name]] = w.flatten(1)
        return out

    def empty(self, n: int, device="cpu") -> torch.Tensor:
        """Zeros for n rows of the index, to which each module's `project` is added."""
        return torch.zeros(n, self.dim, device=device)


def allocate(dims: dict[str, tuple[int, int]], dim: int) -> dict[str, tuple[int, int]]:
    """(k_out, k_in) per module, k split evenly: the smallest modules first, each kept whole when it fits, the
    rest of the budget going to the larger ones."""
    order = sorted(dims, key=lambda n: dims[n][0] * dims[n][1])
    shapes, left = {}, dim
    for i, name in enumerate(order):
        d_in, d_out = dims[name]
        budget = max(1, left // (len(order) - i))
        shapes[name] = _kronecker_shape(d_out, d_in, budget)
        left -= shapes[name][0] * shapes[name][1]
    return {name: shapes[name] for name in dims}


def _kronecker_shape(d_out: int, d_in: int, budget: int) -> tuple[int, int]:
    """(k_out, k_in), k_out * k_in <= budget, keeping a side whole when it is at most the square root."""
    if d_out * d_in <= budget:
        return d_out, d_in
    root = math.isqrt(budget)
    if d_out <= root:
        return d_out, min(d_in, budget // d_out)
    if d_in <= root:
        return min(d_out, budget // d_in), d_in
    return min(d_out, budget // max(root, 1)), max(root, 1)


def _gaussian(d: int, k: int, gen: torch.Generator, device) -> torch.Tensor | None:
    """A (d, k) matrix of N(0, 1/k) entries (E[P P^T] = I); None, the identity, when k covers d."""
    if k >= d:
        return None
    return (torch.randn(d, k, generator=gen) / math.sqrt(k)).to(device)
