"""Scores in resumable chunks (partial/chunk_NNNNN.npz): each complete chunk is one file written atomically, so
a killed run resumes after its last complete chunk, and the final arrays are assembled only when all are in."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from gdig.atomic import save_npz_atomic
from gdig.rundir.layout import PARTIAL


def partial_dir(run_dir: str | Path) -> Path:
    """The folder of a run's work in progress (chunks, seed gradients, fit checkpoints)."""
    return Path(run_dir) / PARTIAL


def chunk_path(run_dir: str | Path, i: int) -> Path:
    """Where chunk i of the candidates' scores is (or will be) written."""
    return partial_dir(run_dir) / f"chunk_{i:05d}.npz"


def part_name(parts: int, group: int) -> str:
    """The folder under partial/ of module group `group` of a run in `parts` groups (--module-partitions)."""
    return f"parts-{parts}/group-{group}"


def part_chunk_path(run_dir: str | Path, part: str, i: int) -> Path:
    """Where a module group's running sums for chunk i are (or will be) written."""
    return partial_dir(run_dir) / part / f"chunk_{i:05d}.safetensors"


def write_chunk(run_dir: str | Path, i: int, arrays: dict[str, np.ndarray]) -> None:
    """One complete chunk (its `index` says which candidates), written whole or not at all."""
    partial_dir(run_dir).mkdir(parents=True, exist_ok=True)
    save_npz_atomic(chunk_path(run_dir, i), **arrays)


def collect_chunks(run_dir: str | Path, n: int, stream: dict[str, Path] | None = None) -> dict[str, np.ndarray]:
    """Every chunk's arrays placed at their candidates' rows; refuses a run with a candidate missing. The arrays
    named in `stream` (the N x M influence, the sketches, the index) are written straight into those .npy files
    as float32 (an int8 or float16 index keeps its dtype), memory-mapped, so the whole matrix is never held in
    memory; the others are returned."""
    stream = stream or {}
    files = sorted(partial_dir(run_dir).glob("chunk_*.npz"))
    merged: dict[str, np.ndarray] = {}
    seen = np.zeros(n, bool)
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            idx = z["index"]
            for key in z.files:
                if key == "index":
                    continue
                arr = z[key]
                if key not in merged:
                    merged[key] = _target(stream.get(key), (n, *arr.shape[1:]), arr.dtype)
                merged[key][idx] = arr
            seen[idx] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} candidates have no score; the run is incomplete")
    for key in stream:
        merged.pop(key).flush()
    return merged


def _target(path: Path | None, shape: tuple[int, ...], dtype) -> np.ndarray:
    if path is None:
        return np.zeros(shape, dtype)
    dtype = dtype if dtype in (np.float16, np.int8) else np.float32  # the index keeps its storage dtype
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def remove_partial(run_dir: str | Path) -> None:
    """Drop the work in progress once the final files are written."""
    shutil.rmtree(partial_dir(run_dir), ignore_errors=True)
