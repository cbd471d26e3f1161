"""The gradient index (DESIGN section 1): each candidate's whitened gradient w(z) = (F + lambda)^(-1/2) grad L(z),
projected to k dimensions, so that any seed set or query is scored against the pool with one matrix product
instead of another pass over it.

The projection is chosen by measurement (bench/bench_index.py): a CountSketch of the whole whitened gradient by
default, a per-module Kronecker Gaussian (LoGra's) as the alternative; with k at least the whitened gradient's
dimension there is no projection at all (exact).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from gdig.config import INDEX_PROJECTIONS
from gdig.readahead import row_blocks

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
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache_left = CACHED_COORDINATES

    def hash(self, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Module `name`'s bucket (int64) and sign (float32) per coordinate, kept while they fit in
        CACHED_COORDINATES in all (BYTES_PER_COORDINATE each), else recomputed at each call (cheap on a GPU)."""
        if name in self._cache:
            return self._cache[name]
        bucket, sign = self._draw(name, device)
        hashed = bucket, sign.float()
        if self.sizes[name] <= self._cache_left:
            self._cache[name] = hashed
            self._cache_left -= self.sizes[name]
        return hashed

    def _draw(self, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """splitmix64 of each coordinate's global position and the seed: a bucket and a sign."""
        start = self.offsets[name]
        x = _splitmix64(torch.arange(start, start + self.sizes[name], device=device), self.random_state)
        return (x & 0x7FFFFFFF) % self.dim, ((x >> 40) & 1) * 2 - 1

    def project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Module `name`'s whitened gradients (B, d_out, d_in) into the k columns: (B, k), to be added up."""
        flat = w.reshape(w.shape[0], -1)
        if self.exact:
            out = flat.new_zeros(w.shape[0], self.dim)
            start = self.offsets[name]
            out[:, start : start + flat.shape[1]] = flat
            return out
        bucket, sign = self.hash(name, flat.device)
        signed = flat * sign.to(device=flat.device, dtype=flat.dtype)
        # scatter_add_ along rows: 2.7x as fast on the CPU as a sparse product, 14x as index_add_ along dim 1
        return flat.new_zeros(w.shape[0], self.dim).scatter_add_(1, bucket.to(flat.device).expand_as(flat), signed)

    def empty(self, n: int, device="cpu") -> torch.Tensor:
        """Zeros for n rows of the index, to which each module's `project` is added."""
        return torch.zeros(n, self.dim, device=device)


CACHED_COORDINATES = 1 << 25  # hashes kept for up to this many coordinates (384 MB): every adapter, small MLPs
BYTES_PER_COORDINATE = 12  # a kept coordinate's bucket (int64, as scatter_add_ takes it) and sign (float32)
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


# -- scoring from the index -------------------------------------------------------------------------------------


@dataclass
class IndexRows:
    """Projected whitened gradients of some examples: unit-length rows (int8 or float16 on disk for candidates),
    the length of each projected row, and each exact whitened norm ||w|| (the square root of self-influence).
    int8 rows carry a scale per row (the unit row is rows * scale): half float16's bytes, and a query is an
    integer product (bench/README.md: the same agreement)."""

    rows: np.ndarray  # (n, k), each row R w / ||R w|| (divided by `scale` when int8)
    projected_norm: np.ndarray  # (n,) ||R w||
    norm: np.ndarray  # (n,) ||w||
    scale: np.ndarray | None = None  # (n,) int8 rows only: max |unit row| / 127

    @classmethod
    def from_projected(cls, projected: torch.Tensor, self_influence: torch.Tensor, dtype="float32") -> IndexRows:
        """Rows from projected whitened gradients (n, k) and self-influences (n,), stored as `dtype`."""
        length = projected.norm(dim=1)
        unit = projected / length.clamp(min=1e-30)[:, None]
        norm = self_influence.double().clamp(min=0).sqrt()
        if np.dtype(dtype) != np.int8:
            return cls(unit.cpu().numpy().astype(dtype), _np32(length), _np32(norm))
        rows, scale = quantize(unit.float())
        return cls(rows.cpu().numpy(), _np32(length), _np32(norm), _np32(scale))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def take(self, which) -> IndexRows:
        """These rows (a slice, indices or a mask), read into memory."""
        scale = None if self.scale is None else np.asarray(self.scale[which])
        return IndexRows(np.asarray(self.rows[which]), self.projected_norm[which], self.norm[which], scale)

    def stored(self, dtype: str) -> IndexRows:
        """These rows as the index stores them in `dtype` (quantized per row for int8)."""
        if np.dtype(dtype) != np.int8:
            return IndexRows(self.unit_rows().astype(dtype), self.projected_norm, self.norm)
        rows, scale = quantize(torch.from_numpy(self.unit_rows()))
        return IndexRows(rows.numpy(), self.projected_norm, self.norm, scale.numpy())

    def unit_rows(self) -> np.ndarray:
        """The unit rows as float32 (n, k), in memory: for seeds and samples, not for a pool."""
        rows = np.asarray(self.rows, np.float32)
        return rows if self.scale is None else rows * np.asarray(self.scale, np.float32)[:, None]


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (rows, scale) with x ~ rows * scale[:, None]; a zero row gets scale 0."""
    scale = x.abs().amax(dim=1) / 127
    rows = torch.round(x / scale.clamp(min=1e-30)[:, None]).clamp(-127, 127).to(torch.int8)
    return rows, scale


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@dataclass
class Anchor:
    """What a run knows exactly: its influence matrix (N, m), memory-mapped, and its seed columns' index rows. A
    new seed or query is split into its best fit on the run's seeds (scored exactly, from these columns) and a
    residual (scored from the index): a control variate whose error scales with the residual alone. On the demo
    it lifts the Spearman of the per-candidate mean at k = 4,096 from 0.959 to 0.986 (bench/README.md)."""

    exact: np.ndarray  # (N, m) the run's scores in its normalisation
    seeds: IndexRows  # the m columns' rows
    columns: np.ndarray | None = None  # the exact columns to use (None: all)


RIDGE = 0.1  # of the anchor rows' mean squared length: keeps the fit stable when seeds are near duplicates


def index_scores(
    pool: IndexRows, queries: IndexRows, normalize: str, anchor: Anchor | None = None, block_bytes: int = 1 << 27
) -> np.ndarray:
    """Scores (n_pool, n_queries) of the pool against the queries from the index, in the run's normalisation
    (raw `none`: <w(q), w(z)>; `unit`: divided by both whitened norms; `relatif`: by the candidate's), float32,
    read a block of rows at a time (the pool's rows may be a memory map of any size). With an `anchor` the part
    of each query the run's own seeds explain is scored exactly."""
    q = torch.from_numpy(_scaled(queries, _query_scale(queries, normalize)))
    coef = None
    if anchor is not None:
        cols = np.arange(anchor.exact.shape[1]) if anchor.columns is None else np.asarray(anchor.columns)
        basis = torch.from_numpy(_scaled(anchor.seeds, _query_scale(anchor.seeds, normalize))[cols])
        coef, q = _fit_on(basis, q)
    out = np.zeros((len(pool), len(queries)), np.float32)
    if coef is not None:  # its own sequential pass: two files read in turns would make the disk seek
        full = np.zeros((anchor.exact.shape[1], coef.shape[1]), np.float32)
        full[cols] = coef  # zero for the columns left out: no copy of the chosen ones
        full = torch.from_numpy(full)
        for rows, e in row_blocks(anchor.exact, max(1, block_bytes // (4 * anchor.exact.shape[1]))):
            out[rows] = (_tensor(e).float() @ full).numpy()
    product = _block_product(pool.rows.dtype, q)
    block = max(1, block_bytes // (4 * max(q.shape[1], 1)))  # rows converted to float32 at a time (128 MB)
    for rows, z in row_blocks(pool.rows, block):
        scores = product(z, None if pool.scale is None else pool.scale[rows])
        out[rows] += scores * _pool_scale(pool, rows, normalize)[:, None]
    return out


HALF_PRODUCT_QUERIES = 8  # up to this many queries, float16 rows are multiplied as they are (no conversion)


def _block_product(dtype: np.dtype, q: torch.Tensor):
    """The product of a block of stored rows with the queries (n_q, k) as float32 (rows, n_q), by the fastest
    exact-enough route for the rows' dtype on a CPU: an integer product for int8 (the queries quantized per
    column); for float16 and a few queries, a float16 product per query (accumulated in float32; converting the
    rows to float32 costs ten times the product); else rows converted to float32 and one matrix product."""
    if dtype == np.int8:
        q8, q_scale = quantize(q)
        q8, q_scale = q8.T.contiguous(), q_scale.numpy()

        def integer(rows, scale):
            prod = torch._int_mm(_tensor(rows), q8).numpy().astype(np.float32)
            return prod * q_scale[None, :] * np.asarray(scale, np.float32)[:, None]

        return integer
    if dtype == np.float16 and q.shape[0] <= HALF_PRODUCT_QUERIES:
        length = q.norm(dim=1).clamp(min=1e-30)  # unit queries in float16: no subnormal entries
        q16 = (q / length[:, None]).half()

        def half(rows, _scale):
            z = _tensor(rows)
            cols = [(z @ q16[j]).float() * length[j] for j in range(len(q16))]
            return torch.stack(cols, 1).numpy() if cols else np.zeros((len(z), 0), np.float32)

        return half
    return lambda rows, _scale: (torch.from_numpy(np.array(rows, np.float32)) @ q.T).numpy()


def _tensor(rows: np.ndarray) -> torch.Tensor:
    """A block of stored rows as a tensor without copying it: a read-only memory map is only read here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(rows))


def _fit_on(basis: torch.Tensor, q: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Ridge coefficients (m, n_q) of each query on the anchor rows, in the projected space, and the queries'
    residuals (n_q, k)."""
    b, x = basis.double(), q.double()
    gram = b @ b.T
    ridge = RIDGE * float(gram.diagonal().mean()) if len(b) else 0.0
    coef = torch.linalg.solve(gram + ridge * torch.eye(len(b), dtype=b.dtype), b @ x.T)
    return coef.float().numpy(), (x - coef.T @ b).float()


def _scaled(rows: IndexRows, scale: np.ndarray) -> np.ndarray:
    return rows.unit_rows() * scale[:, None]


def _query_scale(q: IndexRows, normalize: str) -> np.ndarray:
    """Projected length of R w(q) in the normalisation's units: ||R w|| / ||w|| for unit, ||R w|| otherwise."""
    if normalize == "unit":
        return _safe_ratio(q.projected_norm, q.norm)
    return np.asarray(q.projected_norm, np.float32)


def _pool_scale(pool: IndexRows, rows: slice, normalize: str) -> np.ndarray:
    """The same for the candidates: raw for `none`, divided by the exact norm otherwise."""
    projected = np.asarray(pool.projected_norm[rows], np.float32)
    if normalize == "none":
        return projected
    return _safe_ratio(projected, np.asarray(pool.norm[rows], np.float32))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (a zero gradient scores 0, as in the exact run)."""
    num, den = np.asarray(num, np.float32), np.asarray(den, np.float32)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def agreement(exact: np.ndarray, approx: np.ndarray, sample: int = 20_000, random_state: int = 0) -> dict:
    """How well index scores (n, s) reproduce exact ones, on a fixed sample of rows: Spearman of the mean score
    per candidate, the median over seeds of the per-seed Spearman, and the largest relative error."""
    from scipy.stats import spearmanr

    n = exact.shape[0]
    rows = np.sort(np.random.default_rng(random_state).choice(n, min(n, sample), replace=False))
    e, a = np.asarray(exact[rows], np.float64), np.asarray(approx[rows], np.float64)
    per_seed = [spearmanr(e[:, j], a[:, j])[0] for j in range(e.shape[1])] if len(rows) > 2 else [1.0]
    scale = max(float(np.abs(e).max()), 1e-30)
    return {
        "spearman_mean": float(spearmanr(e.mean(1), a.mean(1))[0]) if len(rows) > 2 else 1.0,
        "spearman_seed_median": float(np.nanmedian(per_seed)),
        "max_abs_error_relative": float(np.abs(e - a).max() / scale),
        "rows_compared": len(rows),
    }
