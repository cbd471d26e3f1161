"""Atomic file writes: write to a temporary name beside the target, then rename. A reader (the app, a resumed
run) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Bytes to `path`, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Indented UTF-8 JSON (settings, status, manifests), atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n").encode())


def save_npy_atomic(path: str | Path, arr: np.ndarray) -> None:
    """One array as .npy, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def save_npz_atomic(path: str | Path, **arrays: np.ndarray) -> None:
    """Named arrays as one .npz, atomically (no pickle: plain arrays only)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Records as JSON lines (UTF-8, non-ASCII kept), written atomically; the folder is made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    return path
