"""Helpers for tests/planning/test_plan.py, each run in a fresh process so its memory is this run's alone.

python tests/stage_peaks.py plan SETTINGS.json [N] the plan's peak and seconds per stage and its seed rank,
                                                    as JSON (N: per process of a torchrun job of N)
python tests/stage_peaks.py measure SETTINGS.json   `gdig score`, and the peak resident memory measured
                                                    during each stage (sampled every millisecond) and its
                                                    seconds, as JSON (under torchrun: each rank's, a line
                                                    each, with its rank)
(bench/bench_plan.py runs them on a real model.)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from gdig.config import ScoreConfig
from gdig.engine.measure import resident_bytes
from gdig.pipeline.run import make_plan, score


def measure(cfg: ScoreConfig) -> dict[str, dict]:
    peaks: dict[str, int] = {}
    seconds: dict[str, float] = {}
    stage = {"now": "load", "since": time.perf_counter()}
    stop = threading.Event()

    def progress(status: dict) -> None:
        now = time.perf_counter()
        name = status["stage"].split(" [")[0]  # a module group's stage (" [2/3]") counts as the stage
        if name != stage["now"]:
            seconds[stage["now"]] = seconds.get(stage["now"], 0.0) + now - stage["since"]
            stage["now"], stage["since"] = name, now

    def sample() -> None:
        while not stop.wait(0.001):
            now = stage["now"]
            peaks[now] = max(peaks.get(now, 0), resident_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        score(cfg, on_progress=progress)
    finally:  # a run that fails still tells what each stage it reached took (bench/bench_plan.py reports it)
        progress({"stage": "end"})
        stop.set()
        thread.join()
        rank = int(os.environ.get("RANK", "0"))
        print(json.dumps({"peaks": peaks, "seconds": seconds, "rank": rank}), flush=True)
    return {"peaks": peaks, "seconds": seconds}


if __name__ == "__main__":
    settings = ScoreConfig.from_dict(json.loads(Path(sys.argv[2]).read_text()))
    if sys.argv[1] == "plan":
        plan = make_plan(settings, processes=int(sys.argv[3]) if len(sys.argv) > 3 else 1)
        peaks = {s: plan.peak(s) for s in plan.stages}
        print(json.dumps({"peaks": peaks, "seconds": plan.seconds, "seed_rank": plan.seed_rank}))
    else:
        measure(settings)
