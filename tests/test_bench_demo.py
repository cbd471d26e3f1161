"""bench_demo's seed-count sweep scores once with many seeds and reads smaller seed sets as column subsets; check
that against runs made with the smaller seed sets."""

from __future__ import annotations

import numpy as np

from conftest import make_pairs, write_jsonl
from gdig.config import ScoreConfig
from gdig.pipeline.run import score


def test_fewer_seeds_are_a_column_subset_of_more(tmp_path, tokenizer):
    from gdig.demo.tiny import build_tiny_model

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    cands = write_jsonl(tmp_path / "cands.jsonl", make_pairs(24, seed=2))
    seeds = make_pairs(9, seed=3)
    runs = {}
    for n in (3, 9):
        cfg = ScoreConfig(
            model="m",
            candidates=str(cands),
            seeds=str(write_jsonl(tmp_path / f"s{n}.jsonl", seeds[:n])),
            out=str(tmp_path / f"run{n}"),
            umap=False,
            normalize="unit",
            hessian="ekfac",
        )
        runs[n] = np.load(score(cfg, model=model, tokenizer=tokenizer) / "influence.npy")
    assert runs[9].shape == (24, 9)
    np.testing.assert_allclose(runs[9][:, :3], runs[3], rtol=1e-4, atol=1e-6)
    assert not np.allclose(runs[9][:, 3:6], runs[3], atol=1e-3)  # other seeds give other columns
