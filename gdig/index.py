"""The gradient index (DESIGN section 1): each candidate's whitened gradient w(z) = (F + lambda)^(-1/2) grad L(z),
projected to k dimensions, so that any seed set or query is scored against the pool with one matrix product
instead of another pass over it.

The projection is Kronecker-structured per module (R w = P_out^T W P_in, as LoGra does), so it costs two thin
products per example and its matrices are a few MB even at 8B; a side small enough to keep whole is kept whole
(the identity), and with k at least the whitened gradient's dimension there is no projection at all (exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PROJECTION = "kronecker-gaussian"  # recorded in index.json; another projection gets another name
NORMS = ("projected", "exact")


class IndexProjection:
    """Fixed random projections per module, reproducible from (module shapes, k, random_state): the run records
    the last two and its modules, so a later process (rescore, query) builds the same matrices."""

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

    @property
    def exact(self) -> bool:
        """Whether no module is projected (every side kept whole): index scores are then the exact scores."""
        return all(p is None for p in (*self.p_out.values(), *self.p_in.values()))

    def project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """P_out^T W P_in flattened, for whitened gradients W (B, d_out, d_in): (B, k_out * k_in)."""
        p_out, p_in = self.p_out[name], self.p_in[name]
        if p_in is not None:
            w = w @ p_in.to(w.device)
        if p_out is not None:
            w = p_out.T.to(w.device) @ w
        return w.flatten(1)

    def empty(self, n: int, device="cpu") -> torch.Tensor:
        """Zeros for n rows of the index, filled module by module (`fill`)."""
        return torch.zeros(n, self.dim, device=device)

    def fill(self, out: torch.Tensor, name: str, w: torch.Tensor) -> None:
        """Add module `name`'s projected whitened gradients to its columns of `out`."""
        out[:, self.slices[name]] = self.project(name, w)


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
    return budget // max(root, 1), max(root, 1)


def _gaussian(d: int, k: int, gen: torch.Generator, device) -> torch.Tensor | None:
    """A (d, k) matrix of N(0, 1/k) entries (E[P P^T] = I); None, the identity, when k covers d."""
    if k >= d:
        return None
    return (torch.randn(d, k, generator=gen) / math.sqrt(k)).to(device)


# -- scoring from the index -------------------------------------------------------------------------------------


@dataclass
class IndexRows:
    """Projected whitened gradients of some examples: unit-length rows (float16 on disk for candidates), the
    length of each projected row, and each exact whitened norm ||w|| (the square root of self-influence)."""

    rows: np.ndarray  # (n, k), each row R w / ||R w||
    projected_norm: np.ndarray  # (n,) ||R w||
    norm: np.ndarray  # (n,) ||w||

    @classmethod
    def from_projected(cls, projected: torch.Tensor, self_influence: torch.Tensor, dtype=np.float32) -> IndexRows:
        """Rows from projected whitened gradients (n, k) and self-influences (n,)."""
        length = projected.norm(dim=1)
        unit = projected / length.clamp(min=1e-30)[:, None]
        norm = self_influence.double().clamp(min=0).sqrt()
        return cls(unit.cpu().numpy().astype(dtype), _np32(length), _np32(norm))

    def __len__(self) -> int:
        return self.rows.shape[0]


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def index_scores(
    pool: IndexRows, queries: IndexRows, normalize: str, norms: str = "projected", block: int = 1 << 15
) -> np.ndarray:
    """Scores (n_pool, n_queries) of the pool against the queries from the index, float32, read a block of rows
    at a time (the pool's rows may be a memory map of any size). raw (`none`): <R w(q), R w(z)>; `unit`: divided
    by both norms (`projected`: of the projected rows, a cosine in the projected space; `exact`: the whitened
    norms); `relatif`: by the candidate's norm."""
    if norms not in NORMS:
        raise ValueError(f"norms must be one of {NORMS}, got {norms!r}")
    q = torch.from_numpy(np.ascontiguousarray(queries.rows, np.float32))
    q_scale = _query_scale(queries, normalize, norms)
    out = np.empty((len(pool), len(queries)), np.float32)
    for start in range(0, len(pool), block):
        rows = slice(start, min(start + block, len(pool)))
        cos = torch.from_numpy(np.array(pool.rows[rows])).float() @ q.T  # a copy: memory maps are read-only
        out[rows] = cos.numpy() * _pool_scale(pool, rows, normalize, norms)[:, None] * q_scale[None, :]
    return out


def _query_scale(q: IndexRows, normalize: str, norms: str) -> np.ndarray:
    if normalize == "unit":
        return np.ones(len(q), np.float32) if norms == "projected" else _safe_ratio(q.projected_norm, q.norm)
    return q.projected_norm.astype(np.float32)


def _pool_scale(pool: IndexRows, rows: slice, normalize: str, norms: str) -> np.ndarray:
    projected = np.asarray(pool.projected_norm[rows], np.float32)
    if normalize == "none" or (normalize == "unit" and norms == "projected"):
        return projected if normalize == "none" else np.ones_like(projected)
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
