"""`python -m gdig score` end to end: every listed architecture, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdig.__main__ import main
from gdig.tiny import ARCHITECTURES, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_scores_through_the_cli(tmp_path, tokenizer, data_files, arch):
    model_dir = tmp_path / arch
    build_tiny_model(arch, tokenizer, model_dir)
    cands, seeds = data_files
    out = tmp_path / "run"
    argv = ["score", "--model", str(model_dir), "--candidates", str(cands), "--seeds", str(seeds), "--out", str(out),
            "--batch-size", "4", "--sketch-dim", "64", "--quiet", "--no-umap"]  # fmt: skip
    assert main(argv) == 0
    infl = np.load(out / "influence.npy")
    assert infl.shape == (24, 5) and infl.dtype == np.float32 and np.isfinite(infl).all() and np.abs(infl).sum() > 0
    sketch = np.load(out / "sketch.npy")
    assert sketch.shape[0] == 24 and np.allclose(np.linalg.norm(sketch, axis=1), 1, atol=1e-5)
    cfg = json.loads((out / "config.json").read_text())
    gated = arch in ("llama", "qwen2", "mistral", "gemma")  # gate, up, down; else two projections per block
    assert cfg["finished"] and len(cfg["modules"]) == (6 if gated else 4)
    cands_df = pd.read_parquet(out / "candidates.parquet")
    assert list(cands_df["id"]) == [str(i) for i in range(24)] and (cands_df["loss"] > 0).all()
    assert json.loads((out / "status.json").read_text())["stage"] == "done"


def test_module_subprocess_entry_point_and_bad_input(tmp_path, llama_dir, data_files):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src_text": "a", "trg_text": "b", "trg_lang": "de"}\n{oops\n')
    cmd = [sys.executable, "-m", "gdig", "score", "--model", str(llama_dir), "--candidates", str(bad),
           "--seeds", str(data_files[1]), "--out", str(tmp_path / "r")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2
    assert "bad.jsonl:2: malformed JSON" in res.stderr and "Traceback" not in res.stderr
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert "malformed JSON" in status["error"]


def test_missing_model_and_bad_regex_are_clear(tmp_path, llama_dir, data_files, capsys):
    cands, seeds = data_files
    base = ["score", "--candidates", str(cands), "--seeds", str(seeds), "--quiet", "--no-umap"]
    assert main([*base, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "a")]) == 2
    assert "could not load model" in capsys.readouterr().err
    assert main([*base, "--model", str(llama_dir), "--out", str(tmp_path / "b"), "--modules", "nothing_here"]) == 2
    assert "matches no linear layer" in capsys.readouterr().err


def test_finished_run_is_never_overwritten(tmp_path, llama_dir, data_files, capsys):
    cands, seeds = data_files
    argv = ["score", "--model", str(llama_dir), "--candidates", str(cands), "--seeds", str(seeds),
            "--out", str(tmp_path / "r"), "--quiet", "--no-umap", "--hessian", "kfac"]  # fmt: skip
    assert main(argv) == 0
    before = (tmp_path / "r" / "influence.npy").read_bytes()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv[:-1], "ekfac", "--resume"]) == 2  # other settings: refused, nothing touched
    assert "other settings" in capsys.readouterr().err
    assert (tmp_path / "r" / "influence.npy").read_bytes() == before
    assert main([*argv, "--resume"]) == 0  # same settings: nothing to do
    assert (tmp_path / "r" / "influence.npy").read_bytes() == before
    assert not (tmp_path / "r" / "umap.npy").exists()
    assert main([*(a for a in argv if a != "--no-umap"), "--resume"]) == 0  # with the map: only the map is added
    umap = np.load(tmp_path / "r" / "umap.npy")
    assert umap.shape == (24, 2) and np.isfinite(umap).all()
    assert (tmp_path / "r" / "influence.npy").read_bytes() == before


def test_tokenizer_without_a_pad_token_is_handled(tmp_path, data_files):
    from conftest import make_pairs
    from gdig.tiny import train_tokenizer

    tok = train_tokenizer([r["src_text"] + " " + r["trg_text"] for r in make_pairs(100, seed=1)], 300, with_pad=False)
    assert tok.pad_token_id is None
    build_tiny_model("qwen2", tok, tmp_path / "m")
    cands, seeds = data_files
    out = tmp_path / "run"
    argv = ["score", "--model", str(tmp_path / "m"), "--candidates", str(cands), "--seeds", str(seeds),
            "--out", str(out), "--batch-size", "5", "--quiet", "--no-umap"]  # fmt: skip
    assert main(argv) == 0
    assert np.isfinite(np.load(out / "influence.npy")).all()
