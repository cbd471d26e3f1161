"""bench/bench_app.py on a small synthetic run: the run folder it writes loads, and every control it times
reruns the app without an exception (so the benchmark cannot rot between its long runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.bench_app import bulk_on_the_map, controls, make_run
from gdig.outputs.export import verify_export
from gdig.rundir.results import load_run

ROOT = Path(__file__).resolve().parents[1]


def test_bench_app_run_folder_and_every_control(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    run = make_run(tmp_path, 3000, 8, 32)
    loaded = load_run(run)
    assert loaded.influence.shape == (3000, 8) and loaded.sketch.dtype == np.float16
    assert np.allclose(np.linalg.norm(loaded.sketch[:50].astype(np.float32), axis=1), 1, atol=2e-3)
    monkeypatch.setenv("GDIG_RUNS_DIR", str(tmp_path))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run_name"] = run.name
    (run / "curation.json").write_text(json.dumps({"rule": "fraction", "tau": 0.9}))
    seconds = controls(at)
    assert len(seconds) == 18
    saved = json.loads((run / "curation.json").read_text())  # each control took effect and was saved with the run
    assert (saved["tau"], saved["clusters"], saved["color_by"], saved["budget"]) == (0.85, 20, "decision", 5000)
    assert not (run / "last_bulk.json").exists()  # the bulk decision on the search was applied, then undone
    out = run / "selections" / "selection.jsonl"  # the last control saved the selection into the run
    kept = json.loads(out.with_suffix(".json").read_text())["counts"]["kept_by_quality_rule"]
    assert 0 < kept < 3000 and len(out.read_text().splitlines()) == min(5000, kept) and verify_export(out)
    on_map = bulk_on_the_map(at, 3000, 1000)
    assert len(on_map) == 3
    assert json.loads((run / "overrides.json").read_text())["include"] == []  # included, then undone
