"""`python -m gdig score` end to end: every listed architecture, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdig.__main__ import main
from gdig.demo.tiny import ARCHITECTURES, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_scores_through_the_cli(tmp_path, tokenizer, data_files, arch):
    model_dir = tmp_path / arch
    build_tiny_model(arch, tokenizer, model_dir)
    cands, seeds = data_files
    out = tmp_path / "run"
    argv = [
        "score",
        "--model",
        str(model_dir),
        "--candidates",
        str(cands),
        "--seeds",
        str(seeds),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--sketch-dim",
        "64",
        "--quiet",
        "--no-umap",
    ]
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
    cmd = [
        sys.executable,
        "-m",
        "gdig",
        "score",
        "--model",
        str(llama_dir),
        "--candidates",
        str(bad),
        "--seeds",
        str(data_files[1]),
        "--out",
        str(tmp_path / "r"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2
    assert "bad.jsonl:2: malformed JSON" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()  # reported before the model loads: no run folder left behind


def test_missing_model_and_bad_regex_are_clear(tmp_path, llama_dir, data_files, capsys):
    cands, seeds = data_files
    base = ["score", "--candidates", str(cands), "--seeds", str(seeds), "--quiet", "--no-umap"]
    assert main([*base, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "was not found. Looked for (1) a local folder with config.json" in err and "(2) the hub id" in err
    assert "huggingface.co" not in err and not (tmp_path / "a").exists()  # checked before anything is written
    assert "`hf download ID`" in err and "huggingface-cli" not in err  # the command the pinned hub installs
    assert main([*base, "--model", str(llama_dir), "--out", str(tmp_path / "b"), "--modules", "nothing_here"]) == 2
    assert "matches no linear layer" in capsys.readouterr().err


def test_finished_run_is_never_overwritten(tmp_path, llama_dir, data_files, capsys):
    cands, seeds = data_files
    argv = [
        "score",
        "--model",
        str(llama_dir),
        "--candidates",
        str(cands),
        "--seeds",
        str(seeds),
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--no-umap",
        "--hessian",
        "kfac",
    ]
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
    from gdig.demo.tiny import train_tokenizer

    tok = train_tokenizer([r["src_text"] + " " + r["trg_text"] for r in make_pairs(100, seed=1)], 300, with_pad=False)
    assert tok.pad_token_id is None
    build_tiny_model("qwen2", tok, tmp_path / "m")
    cands, seeds = data_files
    out = tmp_path / "run"
    argv = [
        "score",
        "--model",
        str(tmp_path / "m"),
        "--candidates",
        str(cands),
        "--seeds",
        str(seeds),
        "--out",
        str(out),
        "--batch-size",
        "5",
        "--quiet",
        "--no-umap",
    ]
    assert main(argv) == 0
    assert np.isfinite(np.load(out / "influence.npy")).all()


def test_help_lists_only_the_public_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert (
        "{score,select,finetune,demo,index,rescore,query,curate,evaluate,compare}" in out
        and "SUPPRESS" not in out
        and "worker" not in out
    )


def test_model_source_names_each_place_it_looked(tmp_path):
    from gdig.inputs.model_source import ModelSourceError, check_model_source

    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelSourceError, match="has no config.json"):
        check_model_source(str(tmp_path / "folder"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="is a file"):
        check_model_source(str(tmp_path / "weights.bin"))
    cache = tmp_path / "hub"
    with pytest.raises(ModelSourceError, match=f"the hub id 'org/tiny' in the local Hugging Face cache \\({cache}\\)"):
        check_model_source("org/tiny", cache_dir=str(cache))
    snap = cache / "models--org--tiny" / "snapshots" / "abc123"  # the hub cache's own layout
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    assert check_model_source("org/tiny", cache_dir=str(cache)).startswith("hub id org/tiny in the local cache")


def test_finetune_checks_the_model_before_starting(tmp_path, data_files, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(tmp_path / "nope"), "--data", str(data_files[0]), "--out", str(out)]) == 2
    assert "was not found" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_pip_install_gives_a_gdig_console_script(tmp_path):
    """`pip install .` gives a `gdig` command (dependencies come from requirements.txt)."""
    pytest.importorskip("setuptools")
    import shutil

    src, target = tmp_path / "src", tmp_path / "site"  # built from a copy: no build/ left in the checkout
    shutil.copytree(ROOT / "gdig", src / "gdig", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
        str(src),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    script = target / "bin" / "gdig"
    assert script.exists()
    res = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert (
        res.returncode == 0 and "{score,select,finetune,demo,index,rescore,query,curate,evaluate,compare}" in res.stdout
    )
    subpackages = "import gdig.rundir.layout, gdig.studio.views, gdig.demo.corpus, gdig.engine.distributed"
    res = subprocess.run(
        [sys.executable, "-c", subpackages],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr  # every subpackage is installed, not only gdig/*.py


def test_score_shows_overall_and_stage_progress_and_ends_with_a_summary(tmp_path, llama_dir, data_files):
    cands, seeds = data_files
    cmd = [
        sys.executable,
        "-m",
        "gdig",
        "score",
        "--model",
        str(llama_dir),
        "--candidates",
        str(cands),
        "--seeds",
        str(seeds),
        "--out",
        str(tmp_path / "r"),
        "--no-umap",
        "--batch-size",
        "4",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    err = res.stderr.replace("\r", "\n")
    assert "job: 100%" in err and "<" in err  # the whole job's bar with elapsed<remaining
    assert "fit_covariance: " in err and "score: " in err and "it/s" in err  # per-stage bars with a rate
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"[gdig] {tmp_path / 'r'}: done in ") and "fit_covariance" in last
    assert "influence.npy (" in last and "sketch.npy (" in last


def test_the_test_command_says_why_the_browser_test_is_skipped(tmp_path):
    """On a machine without Chromium the README's test command names the skip and its reason in its summary."""
    env = os.environ | {"GDIG_CHROMIUM": str(tmp_path / "no-chromium")}
    cmd = [sys.executable, "-m", "pytest", "tests/test_e2e_browser.py"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert "SKIPPED" in res.stdout and "no Chromium at" in res.stdout and "apt-get install chromium" in res.stdout
