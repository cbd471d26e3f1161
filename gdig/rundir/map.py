"""umap.npy: the run's 2-D map of its gradient sketches (gdig.pipeline.umap_map makes it), and the sketches it
is made from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gdig.atomic import save_npy_atomic
from gdig.rundir.layout import SKETCH, UMAP


def read_map(run_dir: str | Path) -> np.ndarray | None:
    """The run's (N, 2) map, or None when it has not been made."""
    path = Path(run_dir) / UMAP
    return np.load(path, allow_pickle=False) if path.exists() else None


def write_map(run_dir: str | Path, embedding: np.ndarray) -> None:
    """Save the run's map (atomically: a reader sees none or all of it)."""
    save_npy_atomic(Path(run_dir) / UMAP, embedding)


def read_sketch(run_dir: str | Path) -> np.ndarray:
    """The run's (N, d) gradient sketches, memory-mapped."""
    return np.load(Path(run_dir) / SKETCH, mmap_mode="r", allow_pickle=False)
