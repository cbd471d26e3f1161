"""The run directory (gdig.rundir): torch-free reading, refusals before writing, chunks, seeds on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gdig.engine.seeds import SeedGradients
from gdig.rundir.chunks import collect_chunks, write_chunk
from gdig.rundir.format import FORMAT
from gdig.rundir.layout import CONFIG, RunExistsError, is_finished, prepare, read_fingerprint, write_config
from gdig.rundir.seeds import load_seed_gradients, save_seed_gradients
from gdig.rundir.status import Status, read_status

ROOT = Path(__file__).resolve().parents[2]


def test_listing_runs_and_following_a_job_do_not_import_torch(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    Status(run).update("score", 3, 10, force=True)
    code = (
        "import sys, gdig.studio.jobs as j, gdig.rundir.status as s, gdig.rundir.results, gdig.rundir.curation\n"
        f"runs = j.list_runs({str(tmp_path / 'runs')!r}, details=True)\n"
        "assert [r['name'] for r in runs] == ['r1'], runs\n"
        f"assert s.read_status({str(run)!r})['done'] == 3\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prepare_refuses_a_finished_run_or_a_foreign_folder(tmp_path):
    run = tmp_path / "r"
    assert prepare(run, resume=False) is None and run.is_dir()
    write_config(run, {"finished": True, "settings": {}})
    with pytest.raises(RunExistsError, match="--resume"):
        prepare(run, resume=False)
    assert prepare(run, resume=True) == {"finished": True, "settings": {}, "format": FORMAT} and is_finished(run)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="not empty"):
        prepare(other, resume=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunExistsError, match="not a folder"):
        prepare(tmp_path / "file", resume=False)


def test_chunks_are_placed_at_their_rows_and_a_missing_one_is_refused(tmp_path):
    write_chunk(tmp_path, 1, {"index": np.array([3, 0]), "influence": np.array([[3.0], [0.0]], np.float32)})
    with pytest.raises(RuntimeError, match="2 candidates have no score"):
        collect_chunks(tmp_path, 4)
    write_chunk(tmp_path, 0, {"index": np.array([2, 1]), "influence": np.array([[2.0], [1.0]], np.float32)})
    merged = collect_chunks(tmp_path, 4)
    assert merged["influence"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0] and set(merged) == {"influence"}


def test_large_arrays_stream_to_npy_files_that_equal_np_save(tmp_path):
    rng = np.random.default_rng(0)
    influence, sketch = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    for i, rows in enumerate(([4, 1], [0, 2, 3])):
        arrays = {"influence": influence[rows], "sketch": sketch[rows], "loss": np.arange(len(rows), dtype=np.float32)}
        write_chunk(tmp_path, i, {"index": np.array(rows)} | arrays)
    streamed = {"influence": tmp_path / "influence.npy", "sketch": tmp_path / "sketch.npy"}
    rest = collect_chunks(tmp_path, 5, streamed)
    assert set(rest) == {"loss"} and rest["loss"].tolist() == [0.0, 1.0, 1.0, 2.0, 0.0]
    np.save(tmp_path / "expected.npy", influence)
    assert (tmp_path / "influence.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    assert np.array_equal(np.load(tmp_path / "sketch.npy"), sketch)


def test_a_finished_run_is_read_memory_mapped_with_exact_statistics(tmp_path):
    import pandas as pd

    from gdig.rundir.results import load_run

    rng = np.random.default_rng(1)
    influence = rng.normal(size=(70_000, 3)).astype(np.float32)  # more rows than one block of 65,536
    np.save(tmp_path / "influence.npy", influence)
    np.save(tmp_path / "sketch.npy", np.ones((70_000, 2), np.float32))
    pd.DataFrame({"id": np.arange(70_000)}).to_parquet(tmp_path / "candidates.parquet")
    pd.DataFrame({"id": ["s0", "s1", "s2"]}).to_parquet(tmp_path / "seeds.parquet")
    write_config(tmp_path, {"finished": True})
    run = load_run(tmp_path)
    assert isinstance(run.influence, np.memmap) and isinstance(run.sketch, np.memmap)
    assert np.array_equal(run.mean_influence, influence.mean(axis=1, dtype=np.float64).astype(np.float32))
    assert np.array_equal(run.frac_helped, (influence > 0).mean(axis=1, dtype=np.float64).astype(np.float32))
    helped, mean = run.column_statistics
    assert np.allclose(helped, (influence > 0).mean(axis=0)) and np.allclose(mean, influence.mean(axis=0), atol=1e-6)


def test_seed_gradients_round_trip_bit_for_bit(tmp_path):
    gen = torch.Generator().manual_seed(0)
    seeds = SeedGradients(
        dense={"a": torch.randn(3, 4, 5, generator=gen)},
        left={"b": torch.randn(3, 6, 2, generator=gen)},
        right={"b": torch.randn(3, 7, 2, generator=gen)},
        self_influence=torch.rand(3, generator=gen),
        lowrank_error={"b": {"max": 0.25, "mean": 0.125}},
    )
    path = tmp_path / "seeds.safetensors"
    save_seed_gradients(path, seeds, "fp1")
    back, fp = load_seed_gradients(path)
    assert fp == "fp1" and read_fingerprint(path) == "fp1" and back.lowrank_error == seeds.lowrank_error
    assert torch.equal(back.dense["a"], seeds.dense["a"]) and torch.equal(back.left["b"], seeds.left["b"])
    assert torch.equal(back.right["b"], seeds.right["b"]) and torch.equal(back.self_influence, seeds.self_influence)
    assert read_fingerprint(tmp_path / "missing.safetensors") is None


def test_status_keeps_the_stage_where_a_job_failed(tmp_path):
    status = Status(tmp_path)
    status.set_plan({"a": 1.0, "b": 3.0})
    status.update("b", 5, 10, force=True)
    assert read_status(tmp_path)["job_fraction"] == pytest.approx(0.25 + 0.75 * 0.5)
    status.fail("boom")
    state = read_status(tmp_path)
    assert (state["stage"], state["done"], state["error"]) == ("b", 5, "boom")
    assert json.loads((tmp_path / "status.json").read_text()) == state
    assert not (tmp_path / CONFIG).exists()
