"""Scoring from the gradient index (DESIGN section 1): the stored rows (int8 with a scale per row, or float), a
new seed or query's scores against the pool with one product read a block at a time, the anchor on the run's own
exact seed columns, and how well index scores agree with exact ones. The projections are gdig.engine.index."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from gdig.engine.readahead import row_blocks


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
    scale = float(gram.diagonal().mean()) if len(b) else 0.0
    ridge = RIDGE * scale if scale > 0 else 1.0  # anchor rows all zero (seeds with no target token): nothing to fit
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
