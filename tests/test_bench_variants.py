"""The quality benchmark derives raw and RelatIF scores from one unit-normalised run; check that against runs
that compute them directly."""

from __future__ import annotations

import numpy as np

from bench.bench_quality import variant_matrices
from gdig.config import ScoreConfig
from gdig.pipeline.run import score


def test_variants_from_a_unit_run_equal_direct_runs(tmp_path, tokenizer, data_files):
    from gdig.demo.tiny import build_tiny_model

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    cands, seeds = data_files
    runs = {}
    for norm in ("unit", "none", "relatif"):
        cfg = ScoreConfig(
            model="m",
            candidates=str(cands),
            seeds=str(seeds),
            out=str(tmp_path / norm),
            umap=False,
            normalize=norm,
            hessian="kfac",
            damping=1e-3,
        )
        runs[norm] = np.load(score(cfg, model=model, tokenizer=tokenizer) / "influence.npy").astype(np.float64)
    derived = variant_matrices(tmp_path / "unit")
    for norm in ("none", "relatif", "unit"):
        np.testing.assert_allclose(derived[norm], runs[norm], rtol=1e-4, atol=1e-6 * np.abs(runs[norm]).max())
