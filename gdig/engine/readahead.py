"""Reading a memory-mapped matrix at the disk's speed: its row blocks are read from the file in large sequential
reads by a background thread, one block ahead of the computation, instead of page fault by page fault inside the
product. A query of a 1,000,000-row index that is not in the page cache is bound by this read (bench/README.md)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def row_blocks(array: np.ndarray, block: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, array[rows]) for consecutive blocks of `block` rows; a whole-file memory map is read ahead in a
    thread (file reads release the GIL), any other array is sliced."""
    n = array.shape[0]
    if not _whole_file_map(array):
        for start in range(0, n, block):
            rows = slice(start, min(n, start + block))
            yield rows, array[rows]
        return
    fd = os.open(array.filename, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gdig-read") as reader:
            pending = reader.submit(_read_rows, fd, array, 0, min(n, block))
            for start in range(0, n, block):
                rows = slice(start, min(n, start + block))
                got = pending.result()
                if rows.stop < n:
                    pending = reader.submit(_read_rows, fd, array, rows.stop, min(n, rows.stop + block))
                yield rows, got
    finally:
        os.close(fd)


def _read_rows(fd: int, array: np.memmap, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the array's file, read into memory (pread until every byte is in)."""
    out = np.empty((stop - start, *array.shape[1:]), array.dtype)
    view = memoryview(out).cast("B")
    pos, done = array.offset + start * array.strides[0], 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], pos + done)
        if got <= 0:
            raise OSError(f"{array.filename}: the file ended before row {stop}")
        done += got
    return out


def _whole_file_map(a) -> bool:
    """A C-ordered memory map of a whole .npy file (a slice of one carries its parent's offset, not its own)."""
    return (
        hasattr(os, "preadv")
        and isinstance(a, np.memmap)
        and isinstance(a.base, mmap.mmap)
        and a.filename is not None
        and a.flags.c_contiguous
    )
