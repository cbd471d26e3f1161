"""The gradient index's files in a run directory (index.npy, index_norms.npy, index_seeds.npz, index.json), read
memory-mapped; index.json is written last, so a run holds a complete index or none."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gdig.atomic import save_npy_atomic, save_npz_atomic, write_json_atomic
from gdig.rundir.layout import INDEX, INDEX_META, INDEX_NORMS, INDEX_SEEDS

if TYPE_CHECKING:
    from gdig.engine.index_scoring import IndexRows

INDEX_ROWS = "index_rows"  # keys of a scored chunk (gdig.rundir.chunks)
INDEX_PROJECTED_NORM = "index_projected_norm"
INDEX_ROW_SCALE = "index_row_scale"  # int8 rows only
INDEX_FORMAT = 1
INDEX_FILES = (INDEX, INDEX_NORMS, INDEX_SEEDS, INDEX_META)
HOW_TO_INDEX = "`gdig index RUN` adds it (one pass over the pool with the run's model)"


class NoIndexError(ValueError):
    """A run without a (complete) gradient index, and how to add one."""


@dataclass
class RunIndex:
    """A run's index: the pool's rows (memory-mapped), the seeds' rows and what made them (index.json)."""

    pool: IndexRows
    seeds: IndexRows
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        """k, the dimension of the projected gradients."""
        return int(self.meta["k"])

    @property
    def projection(self) -> str:
        """Which projection made the rows (gdig.engine.index.PROJECTIONS)."""
        return str(self.meta["projection"])


def has_index(run_dir: str | Path) -> bool:
    """Whether the run holds a complete index (index.json is written last)."""
    return (Path(run_dir) / INDEX_META).exists()


def load_index(run_dir: str | Path) -> RunIndex:
    """The run's index; NoIndexError says how to add one to a run made without it."""
    from gdig.engine.index_scoring import IndexRows

    run = Path(run_dir)
    if not has_index(run):
        raise NoIndexError(f"{run}: this run has no gradient index; {HOW_TO_INDEX}")
    try:
        meta = json.loads((run / INDEX_META).read_text())
        rows = np.load(run / INDEX, mmap_mode="r", allow_pickle=False)
        norms = np.load(run / INDEX_NORMS, allow_pickle=False)
        with np.load(run / INDEX_SEEDS, allow_pickle=False) as z:
            seeds = IndexRows(z["rows"], z["projected_norm"], z["norm"])
    except (OSError, ValueError, KeyError) as e:
        raise NoIndexError(f"{run}: the gradient index is unreadable ({e}); {HOW_TO_INDEX}") from None
    columns = 3 if rows.dtype == np.int8 else 2  # int8 rows: their scales too
    if rows.ndim != 2 or rows.shape[1] != seeds.rows.shape[1] or norms.shape != (rows.shape[0], columns):
        raise NoIndexError(f"{run}: the index files disagree ({rows.shape}, {norms.shape}); {HOW_TO_INDEX}")
    scale = norms[:, 2] if columns == 3 else None
    return RunIndex(IndexRows(rows, norms[:, 0], norms[:, 1], scale), seeds, meta)


def write_index_norms(
    run_dir: str | Path, projected_norm: np.ndarray, norm: np.ndarray, scale: np.ndarray | None = None
) -> None:
    """index_norms.npy: each candidate's projected length and exact whitened norm (and its row's scale when the
    rows are int8)."""
    columns = [projected_norm, norm] + ([] if scale is None else [scale])
    save_npy_atomic(Path(run_dir) / INDEX_NORMS, np.stack(columns, axis=1).astype(np.float32))


def write_index_seeds(run_dir: str | Path, seeds: IndexRows) -> None:
    """index_seeds.npz: the seed columns' rows, lengths and norms."""
    rows = seeds.unit_rows()
    save_npz_atomic(Path(run_dir) / INDEX_SEEDS, rows=rows, projected_norm=seeds.projected_norm, norm=seeds.norm)


def write_index_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """index.json, last: the index is complete from here on."""
    write_json_atomic(Path(run_dir) / INDEX_META, {"format": INDEX_FORMAT} | meta)


def index_note(config: dict) -> str | None:
    """One line for a run whose seeds were scored from an index (None for an exact run), from its config.json:
    the parent, k and the agreement measured on the parent's own seeds."""
    info = config.get("scored_from_index")
    if not info:
        return None
    agr = info.get("agreement") or {}
    rho = agr.get("spearman_mean")
    figure = f"; measured on the parent's own seeds, Spearman {rho:.3f} of the mean score" if rho else ""
    return (
        f"{info['index_columns']} seed column(s) scored from the gradient index of {Path(info['parent']).name} "
        f"(k = {info['k']:,}){figure}; {info['exact_columns']} exact"
    )
