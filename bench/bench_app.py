"""App responsiveness on a large run: 100,000 candidates x 256 seeds, 1,024-d sketches (synthetic run folder).
Times each control's rerun through Streamlit's AppTest (the server-side work a browser waits for).

    python bench/bench_app.py [--n 100000]

Writes bench/reports/app-<date>.{md,json}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_select import synthetic  # noqa: E402
from bench.common import CACHE, machine, save_report  # noqa: E402


def make_run(folder: Path, n: int, m: int, d: int) -> Path:
    run = folder / "big"
    if (run / "umap.npy").exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    infl, sketch = synthetic(n, m, d)
    np.save(run / "influence.npy", infl)
    np.save(run / "sketch.npy", sketch)
    rng = np.random.default_rng(0)
    np.save(run / "umap.npy", rng.normal(size=(n, 2)).astype(np.float32))
    words = np.array(
        ["the", "cat", "dog", "house", "tree", "sees", "runs", "big", "small", "red", "green", "river", "sun", "moon"]
    )
    src = [" ".join(rng.choice(words, 8)) for _ in range(n)]
    recs = [json.dumps({"src_text": s, "trg_text": s.upper(), "trg_lang": "de"}) for s in src]
    cands = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "loss": rng.random(n).astype(np.float32),
            "n_tokens": np.full(n, 10),
            "prompt": src,
            "target": [s.upper() for s in src],
            "record": recs,
            "src_text": src,
            "trg_text": [s.upper() for s in src],
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
    return run


def timed(at, action) -> float:
    t0 = time.perf_counter()
    action()
    at.run()
    assert not at.exception, at.exception
    return time.perf_counter() - t0


def main() -> None:
    from streamlit.testing.v1 import AppTest

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--dim", type=int, default=1024)
    args = ap.parse_args()
    run = make_run(CACHE / f"app-{args.n}", args.n, args.seeds, args.dim)
    os.environ["GDIG_RUNS_DIR"] = str(run.parent)
    os.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["run_name"] = run.name
    (run / "curation.json").write_text(json.dumps({"rule": "fraction", "tau": 0.9}))  # the rule the curator set
    res: dict[str, float] = {}
    at.run()
    res["first load of the run (cached afterwards)"] = timed(at, lambda: at.switch_page("app_pages/influence.py"))
    res["influence: move tau"] = timed(at, lambda: at.slider(key="w_tau").set_value(0.8))
    res["influence: move tau again"] = timed(at, lambda: at.slider(key="w_tau").set_value(0.85))
    res["clusters: open page (clusters kept set, K=10)"] = timed(at, lambda: at.switch_page("app_pages/clusters.py"))
    res["clusters: new K"] = timed(at, lambda: at.slider(key="w_clusters").set_value(20))
    res["clusters: colour by score"] = timed(at, lambda: at.selectbox(key="w_color_by").set_value("mean influence"))
    res["explore: open page"] = timed(at, lambda: at.switch_page("app_pages/explore.py"))
    pick = str(min(12345, args.n // 2))  # an id that exists at any --n
    res["explore: pick a candidate"] = timed(at, lambda: at.selectbox(key="ex_id").set_value(pick))
    res["explore: search text"] = timed(at, lambda: at.text_input(key="ex_query").set_value("river sun"))
    res["export: open page"] = timed(at, lambda: at.switch_page("app_pages/export.py"))
    res["export: new budget"] = timed(at, lambda: at.number_input(key="w_budget").set_value(5000))
    r = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "settings": {"n": args.n, "seeds": args.seeds, "dim": args.dim},
        "seconds": res,
    }
    lines = [
        f"# App responsiveness, {r['date']}",
        "",
        f"Machine: {r['machine']}. Run: {r['settings']}.",
        "",
        "| control | seconds |",
        "|---|---:|",
    ] + [f"| {k} | {v:.2f} |" for k, v in res.items()]
    save_report("app", r, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
