"""App responsiveness on a large run: 1,000,000 candidates x 256 seeds (the 1 GB influence matrix), 1,024-d
sketches (a synthetic run folder, written once in its own process and cached). Times each control's rerun
through Streamlit's AppTest (the server-side work a browser waits for) and the app process's peak memory.

    python bench/bench_app.py [--n 1000000] [--seeds 256] [--dim 1024]

Writes bench/reports/app-<date>.{md,json}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import CACHE, machine, save_report  # noqa: E402


def make_run(folder: Path, n: int, m: int, d: int) -> Path:
    """A finished synthetic run folder (cached): influence with a per-candidate quality, sketches around 50
    planted centres (float16, unit rows, as `gdig score` writes them), random map coordinates, short texts."""
    run = folder / "big"
    if (run / "umap.npy").exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    fill_synthetic(run, n, m, d, rng)
    words = np.array(
        ["the", "cat", "dog", "house", "tree", "sees", "runs", "big", "small", "red", "green", "river", "sun", "moon"]
    )
    src = [" ".join(w) for w in words[rng.integers(0, len(words), (n, 8))].tolist()]
    trg = [s.upper() for s in src]
    recs = [json.dumps({"src_text": s, "trg_text": t, "trg_lang": "de"}) for s, t in zip(src, trg, strict=True)]
    cands = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "loss": rng.random(n).astype(np.float32),
            "n_tokens": np.full(n, 10),
            "prompt": src,
            "target": trg,
            "record": recs,
            "src_text": src,
            "trg_text": trg,
        }
    )
    cands.to_parquet(run / "candidates.parquet")
    seeds = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(m)],
            "loss": np.ones(m, np.float32),
            "n_tokens": np.full(m, 10),
            "prompt": ["p"] * m,
            "target": ["t"] * m,
        }
    )
    seeds.to_parquet(run / "seeds.parquet")
    (run / "config.json").write_text(
        json.dumps({"settings": {"seed_batch": 1, "normalize": "none"}, "finished": True, "fingerprints": {}})
    )
    (run / "status.json").write_text(json.dumps({"stage": "done", "done": 1, "total": 1, "error": None}))
    np.save(run / "umap.npy", rng.normal(size=(n, 2)).astype(np.float32))  # last: it marks the folder complete
    return run


def fill_synthetic(run: Path, n: int, m: int, d: int, rng: np.random.Generator, block: int = 50_000) -> None:
    """influence.npy and sketch.npy written a block of rows at a time (1,000,000 x 1,024 never in memory)."""
    from numpy.lib.format import open_memmap

    centres = rng.normal(size=(50, d)).astype(np.float32)
    influence = open_memmap(run / "influence.npy", "w+", np.float32, (n, m))
    sketch = open_memmap(run / "sketch.npy", "w+", np.float16, (n, d))
    for start in range(0, n, block):
        b = min(block, n - start)
        quality = rng.normal(0.3, 1.0, (b, 1)).astype(np.float32)
        influence[start : start + b] = (quality + rng.standard_normal((b, m), dtype=np.float32)) * 1e-3
        x = centres[rng.integers(0, len(centres), b)] + 0.7 * rng.standard_normal((b, d), dtype=np.float32)
        sketch[start : start + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    influence.flush()
    sketch.flush()


def timed(at, action) -> float:
    t0 = time.perf_counter()
    action()
    at.run()
    assert not at.exception, at.exception
    return time.perf_counter() - t0


def controls(at) -> dict[str, float]:
    """Every control a curator touches, in the order a curator would, each timed through its rerun."""
    res: dict[str, float] = {}
    at.run()
    res["first load of the run (cached afterwards)"] = timed(at, lambda: at.switch_page("app_pages/influence.py"))
    res["influence: move tau"] = timed(at, lambda: at.slider(key="w_tau").set_value(0.8))
    res["influence: move tau again"] = timed(at, lambda: at.slider(key="w_tau").set_value(0.85))
    res["influence: another seed's histogram"] = timed(at, lambda: at.selectbox(key="seed_pick").set_value(3))
    first_draw = "clusters: open page = the map's first draw (K-means of the kept set, K=10; map precomputed)"
    res[first_draw] = timed(at, lambda: at.switch_page("app_pages/clusters.py"))
    res["clusters: new K"] = timed(at, lambda: at.slider(key="w_clusters").set_value(20))
    res["clusters: colour by score"] = timed(at, lambda: at.selectbox(key="w_color_by").set_value("mean influence"))
    res["clusters: colour by decision"] = timed(at, lambda: at.selectbox(key="w_color_by").set_value("decision"))
    res["explore: open page (search index built once)"] = timed(at, lambda: at.switch_page("app_pages/explore.py"))
    pick = at.selectbox(key="ex_id").options[10]  # a candidate in the table, not the first
    res["explore: pick a candidate"] = timed(at, lambda: at.selectbox(key="ex_id").set_value(pick))
    res["explore: exclude it by hand (overrides in force from here)"] = timed(
        at, lambda: at.button(key="ov_exclude").click()
    )
    res["explore: search text"] = timed(at, lambda: at.text_input(key="ex_query").set_value("river sun"))
    res["explore: sort by loss"] = timed(at, lambda: at.selectbox(key="ex_sort").set_value("loss"))
    listed = at.selectbox(key="ex_bulk_choice").label.split()[2]  # "For all N listed"
    res[f"explore: exclude all {listed} rows the search lists (bulk)"] = timed(
        at, lambda: at.button(key="ex_bulk_apply").click()
    )
    res["explore: undo the bulk decision"] = timed(at, lambda: at.button(key="ex_bulk_undo").click())
    res["export: open page"] = timed(at, lambda: at.switch_page("app_pages/export.py"))
    res["export: new budget"] = timed(at, lambda: at.number_input(key="w_budget").set_value(5000))
    res["export: save the JSONL into the run (5,000 lines)"] = timed(at, lambda: at.button(key="exp_save").click())
    return res


BULK_ROWS = 100_000  # the bulk action: 100,000 rows of a 1,000,000-candidate run within 2 s


def bulk_on_the_map(at, n: int, rows: int) -> dict[str, float]:
    """A box selection of `rows` candidates on the map (set as the page keeps it), included in one bulk
    decision, then undone: each timed through its rerun (K-means of the new kept set included)."""
    res: dict[str, float] = {}
    at.session_state["lasso_rows"] = np.random.default_rng(1).choice(n, rows, replace=False).tolist()
    res[f"clusters: open page with a {rows:,}-row box selection"] = timed(
        at, lambda: at.switch_page("app_pages/clusters.py")
    )
    at.selectbox(key="map_bulk_choice").set_value("Include").run()
    res[f"clusters: include the {rows:,} selected (bulk)"] = timed(at, lambda: at.button(key="map_bulk_apply").click())
    res["clusters: undo the bulk decision"] = timed(at, lambda: at.button(key="map_bulk_undo").click())
    return res


def main() -> None:
    from streamlit.testing.v1 import AppTest

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--make-only", action="store_true", help="write the synthetic run and stop")
    args = ap.parse_args()
    folder = CACHE / f"app-{args.n}-{args.seeds}-{args.dim}"
    if args.make_only:
        make_run(folder, args.n, args.seeds, args.dim)
        return
    t0 = time.perf_counter()
    command = [sys.executable, __file__, "--make-only", f"--n={args.n}", f"--seeds={args.seeds}", f"--dim={args.dim}"]
    subprocess.run(command, check=True)  # in its own process: the peak below is the app's alone
    made = time.perf_counter() - t0
    run = folder / "big"
    os.environ["GDIG_RUNS_DIR"] = str(folder)
    os.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["run_name"] = run.name
    for name in ("overrides.json", "last_bulk.json"):  # a run of its own decisions, not a previous bench's
        (run / name).unlink(missing_ok=True)
    (run / "curation.json").write_text(json.dumps({"rule": "fraction", "tau": 0.9}))  # the rule the curator set
    res = controls(at)
    res.update(bulk_on_the_map(at, args.n, min(BULK_ROWS, args.n // 2)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "settings": {"n": args.n, "seeds": args.seeds, "dim": args.dim},
        "seconds": res,
        "app_peak_rss_mb": peak_mb,
        "run_folder_seconds": made,
    }
    slow = [k for k, v in res.items() if v >= 1.0]
    lines = [
        f"# App responsiveness, {r['date']}",
        "",
        f"Machine: {r['machine']}. Run: {args.n:,} candidates x {args.seeds} seeds, {args.dim}-d float16 sketches.",
        "",
        "| control | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in res.items()],
        "",
        f"Peak resident memory of the app process (AppTest runs the app's scripts in it): {peak_mb:,.0f} MB.",
        f"At or over 1 s: {', '.join(slow) if slow else 'none'}.",
    ]
    save_report("app", r, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
