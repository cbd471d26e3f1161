"""Row blocks of a memory-mapped matrix read ahead from its file (gdig.engine.readahead) are the matrix's own rows."""

from __future__ import annotations

import numpy as np
import pytest

from gdig.engine.readahead import _whole_file_map, row_blocks


@pytest.mark.parametrize("dtype", [np.int8, np.float16, np.float32])
def test_blocks_read_from_the_file_equal_the_rows_including_a_short_last_block(tmp_path, dtype):
    x = (np.random.default_rng(0).standard_normal((103, 7)) * 50).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert _whole_file_map(mapped)
    got = list(row_blocks(mapped, 10))
    assert [r.start for r, _ in got] == list(range(0, 103, 10)) and got[-1][0] == slice(100, 103)
    assert all(not isinstance(b, np.memmap) for _, b in got)  # read into memory, not page-faulted
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), x)


def test_a_slice_of_a_map_or_an_array_in_memory_is_sliced(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    part = np.load(tmp_path / "x.npy", mmap_mode="r")[5:]
    assert not _whole_file_map(part) and not _whole_file_map(x)
    np.testing.assert_array_equal(np.concatenate([b for _, b in row_blocks(part, 4)]), x[5:])
    np.testing.assert_array_equal(np.concatenate([b for _, b in row_blocks(x, 7)]), x)
