"""The disk a run needs (gdig.planning.disk): counted from the factors, the fit's checkpoints and the results,
checked before a run starts, and equal to what a run writes at its fullest on a tiny model."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest

from gdig.config import ScoreConfig
from gdig.demo.tiny import build_tiny_model
from gdig.planning.disk import plan_disk


def test_the_disk_counts_factors_checkpoints_and_results():
    dims = {"a": (3, 5), "b": (4, 2), "c": (6, 6)}
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o", sketch_dim=7, index_dim=10, index_dtype="int8")
    one = plan_disk(cfg, dims, n_candidates=100, n_columns=9, parts=1, processes=1)
    factors = 4 * ((9 + 25 + 15) + (16 + 4 + 8) + (36 + 36 + 36))  # EK-FAC: A, G and Lambda, float32
    assert one.factors == factors
    assert one.checkpoints == 8 * ((9 + 25 + 15) + (16 + 4 + 8) + (36 + 36 + 36))  # float64 sums, both passes
    assert one.results == 2 * 100 * (4 * (9 + 7 + 4) + 10)  # chunks, then the final files
    assert one.seeds == 4 * (15 + 8 + 36) + 4 * 9 * 10  # the mean seed direction and the seeds' index rows
    assert plan_disk(cfg, dims, 100, 9, 1, 1, seed_bytes=1000).seeds == one.seeds + 1000
    groups = plan_disk(cfg, dims, 100, 9, parts=2, processes=1)
    assert groups.factors == 2 * factors  # the groups' files, then the joined one
    assert groups.results == one.results + 100 * 4 * (9 + 7 + 10 + 2)  # the first group's running sums
    assert groups.checkpoints < one.checkpoints  # one group's sums at a time
    kfac = plan_disk(dataclasses.replace(cfg, hessian="kfac"), dims, 100, 9, 1, 1)
    assert kfac.checkpoints == 8 * ((9 + 25) + (16 + 4) + (36 + 36))  # no eigenvalue pass
    assert plan_disk(dataclasses.replace(cfg, hessian="identity"), dims, 100, 9, 1, 1).factors == 0
    assert plan_disk(cfg, dims, 100, 9, 1, processes=2).checkpoints == 2 * one.checkpoints  # each rank's sums
    sharded = plan_disk(dataclasses.replace(cfg, shard_factors=True), dims, 100, 9, parts=3, processes=2)
    assert sharded.checkpoints == 8 * (108 + 49)  # the two largest groups fit at once, one per process


def test_a_run_without_the_disk_it_needs_is_refused_before_it_starts(tmp_path, tokenizer, data_files, monkeypatch):
    from gdig.pipeline.run import MemoryPlanError, score
    from gdig.planning import disk

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    monkeypatch.setattr(disk, "free_disk_bytes", lambda out: 1000.0)
    out = tmp_path / "r"
    cfg = ScoreConfig(model="m", candidates=str(data_files[0]), seeds=str(data_files[1]), out=str(out), umap=False)
    with pytest.raises(MemoryPlanError, match=r"this run writes about .* GiB \(factors .* but 0.00 GiB is free"):
        score(cfg, model=model, tokenizer=tokenizer)
    assert not (out / "config.json").exists() and not (out / "factors.safetensors").exists()


def test_the_planned_disk_covers_what_a_run_writes_at_its_fullest(tmp_path, tokenizer, data_files):
    """The run's folder sampled while it works, against the plan (an over-estimate by design, within 3 x)."""
    from gdig.pipeline.run import make_plan, score

    model = build_tiny_model("llama", tokenizer, hidden=32, ffn=256, heads=2)
    out = tmp_path / "r"
    cfg = ScoreConfig(
        model="m",
        candidates=str(data_files[0]),
        seeds=str(data_files[1]),
        out=str(out),
        umap=False,
        module_partitions=2,
    )
    planned = make_plan(cfg, model=model, tokenizer=tokenizer).disk.total
    fullest, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            sizes = {}
            for p in out.rglob("*") if out.exists() else []:
                with contextlib.suppress(FileNotFoundError):  # a file replaced or removed meanwhile
                    sizes[str(p.relative_to(out))] = p.stat().st_size if p.is_file() else 0
            fullest[0] = max(fullest[0], sum(sizes.values()))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        score(cfg, model=model, tokenizer=tokenizer)
    finally:
        stop.set()
        thread.join()
    factors = (out / "factors.safetensors").stat().st_size
    assert factors <= fullest[0] <= planned < 3 * fullest[0] + 2**20, (planned, fullest[0], factors)
