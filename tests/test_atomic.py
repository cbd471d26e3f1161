"""Atomic writes: a reader sees the old file or the new one, never half of one, and no temporary file stays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gdig.atomic import atomic_path, save_npy_atomic, save_npz_atomic, write_json_atomic, write_jsonl


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_each_writer_round_trips(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"ü": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"ü": [1, 2]}
    save_npy_atomic(tmp_path / "b.npy", np.arange(3, dtype=np.float32))
    assert np.load(tmp_path / "b.npy").tolist() == [0.0, 1.0, 2.0]
    save_npz_atomic(tmp_path / "c.npz", x=np.ones(2), y=np.zeros(1))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["x", "y"]
    out = write_jsonl(tmp_path / "sub" / "d.jsonl", [{"a": "ß"}, {"b": 1}])
    assert out.read_text(encoding="utf-8") == '{"a": "ß"}\n{"b": 1}\n'
    assert not list(tmp_path.rglob(".*.tmp"))
