"""The GPU benchmark (bench/bench_gpu.py): without CUDA it says so and exits 0; its tiny sizes run end to end on
the CPU (the CUDA-only plan check skipped with a message)."""

from __future__ import annotations

import json

import pytest

from bench import bench_gpu


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(bench_gpu, "cuda", lambda: False)
    assert bench_gpu.main([]) == 0
    assert "no CUDA device here" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_sizes_run_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "cuda", lambda: False)
    assert bench_gpu.main(["--tiny", "--reports", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["plan"]["skipped"].startswith("needs CUDA") and "skipped" in capsys.readouterr().out
    assert set(report["scoring"]["runs"]) == {"float32", "bfloat16"}
    assert 0.9 < report["scoring"]["spearman_mean_influence"] <= 1.0
    assert report["engine"]["floor_seconds"] > 0 and report["engine"]["total/floor"] > 0
    assert "float32 against bfloat16" in (tmp_path / "gpu.md").read_text()
