"""Every benchmark in one command; writes each script's dated report and a combined one.

    python bench/run_all.py --quick   # small sizes, under 10 minutes on 2 CPU cores
    python bench/run_all.py           # the sizes quoted in bench/README.md, about 65 minutes on 2 CPU cores
                                      # (plus about an hour for bench_pretrained.py when SmolLM2 is installed)

Each benchmark runs in its own process (so peak memory and timings are its own). kronfluence is optional
(requirements-bench.txt); without it that comparison is reported as skipped, as is the real-data benchmark
without ../shared/data. Reports: bench/reports/NAME[-quick]-DATE.{md,json} and all[-quick]-DATE.{md,json}.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, have_shared_data, machine, report_stem, save_report  # noqa: E402

QUICK = {
    "engine": ["--candidates", "300", "--seeds", "16", "--repeats", "1", "--vocab", "2000"],
    "select": ["--n", "20000", "--seeds", "64", "--dim", "256", "--no-umap"],
    "app": ["--n", "10000", "--seeds", "64", "--dim", "256"],
    "kronfluence": ["--candidates", "300", "--seeds", "16", "--repeats", "1", "--vocab", "2000"],
    "distributed": ["--candidates", "300", "--seeds", "16", "--repeats", "1", "--vocab", "2000"],
    "quality": ["--quick"],
    "demo": ["--quick"],
    "index": ["--ks", "4096", "--projections", "countsketch", "--skip-speed"],
    "duplicates": ["--n", "100000", "--repeats", "1"],
}
FULL = {
    "engine": ["--repeats", "1"],
    "select": [],
    "app": [],
    "kronfluence": ["--repeats", "1"],
    "distributed": ["--repeats", "1"],
    "scaling": ["--candidates", "1000", "2000", "4000", "--seeds", "16", "64", "256"],
    "quality": [],
    "demo": [],
    "index": [],  # the demo's k sweep, a second seed set, and speed at 1,000,000 (a 33 GB file on disk)
    "pretrained": ["--runs", "lora ekfac", "lora kfac", "lora identity"],  # about an hour more, with SmolLM2
    "plan": [],  # SmolLM2 at 2,000 x 256: about an hour more
    "duplicates": [],  # 1,000,000 pairs: under a minute
}


def skip_reason(name: str) -> str | None:
    if name == "kronfluence" and importlib.util.find_spec("kronfluence") is None:
        return "kronfluence not installed (pip install -r requirements-bench.txt; see bench/README.md)"
    if name in ("quality", "pretrained", "plan") and not have_shared_data():
        return "no real data at ../shared/data"
    if name in ("pretrained", "plan"):
        from gdig.inputs.model_source import SMOLLM2_INSTALL, smollm2_gguf

        if smollm2_gguf() is None:
            return f"SmolLM2 not installed ({SMOLLM2_INSTALL})"
    return None


def run_one(name: str, args: list[str], resume: bool = False) -> dict:
    reason = skip_reason(name)
    if reason:
        print(f"[{name}] skipped: {reason}", flush=True)
        return {"name": name, "status": "skipped", "reason": reason}
    cmd = [sys.executable, f"bench/bench_{name}.py", *args]
    report = report_stem(name, date.today().isoformat()).with_suffix(".md")
    if resume and report.exists():
        print(f"[{name}] reusing today's report {report.name}", flush=True)
        return {
            "name": name,
            "status": "ok",
            "reused": True,
            "command": " ".join(cmd[1:]),
            "report": str(report.relative_to(ROOT)),
        }
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    secs = time.time() - t0
    if out.returncode != 0:
        print(f"[{name}] FAILED after {secs:.0f} s:\n{out.stderr[-2000:]}", flush=True)
        return {"name": name, "status": "failed", "seconds": secs, "stderr": out.stderr[-4000:]}
    print(f"[{name}] done in {secs:.0f} s", flush=True)
    return {
        "name": name,
        "status": "ok",
        "seconds": secs,
        "command": " ".join(cmd[1:]),
        "report": str(report.relative_to(ROOT)) if report.exists() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", help="run only these benchmarks")
    ap.add_argument("--resume", action="store_true", help="keep the benchmarks that already have today's report")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    if args.quick:
        os.environ["GDIG_BENCH_TAG"] = "quick"  # children inherit it: quick reports never overwrite full ones
    t0 = time.time()
    results = [run_one(name, a, args.resume) for name, a in plan.items() if not args.only or name in args.only]
    report = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "quick": args.quick,
        "seconds": time.time() - t0,
        "benchmarks": results,
    }
    lines = [
        f"# All benchmarks{' (quick)' if args.quick else ''}, {report['date']}",
        "",
        f"Command: `python bench/run_all.py{' --quick' if args.quick else ''}`  ",
        f"Machine: {report['machine']}; total {report['seconds'] / 60:.1f} min",
        "",
    ]
    for r in results:
        took = f" ({r['seconds']:.0f} s)" if "seconds" in r else " (today's report, reused)" if r.get("reused") else ""
        lines.append(f"## {r['name']}: {r['status']}{took}")
        if r["status"] == "skipped":
            lines.append(r["reason"])
        elif r.get("report"):
            body = (ROOT / r["report"]).read_text().split("\n", 1)[1].strip()
            lines += [f"`{r['command']}` -> {r['report']}", "", body]
        lines.append("")
    stem = save_report("all", report, "\n".join(lines))
    print(f"wrote {stem}.md ({report['seconds'] / 60:.1f} min)")
    if any(r["status"] == "failed" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
