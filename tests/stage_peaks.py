"""Helpers for tests/test_plan.py, each run in a fresh process so its memory is this run's alone.

python tests/stage_peaks.py plan SETTINGS.json      the plan's peak per stage, as JSON
python tests/stage_peaks.py measure SETTINGS.json   `gdig score`, and the peak resident memory measured
                                                    during each stage (sampled every millisecond), as JSON
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from gdig.config import ScoreConfig
from gdig.plan import resident_bytes
from gdig.run import make_plan, score


def measure(cfg: ScoreConfig) -> dict[str, int]:
    peaks: dict[str, int] = {}
    stage = {"now": "load"}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            now = stage["now"]
            peaks[now] = max(peaks.get(now, 0), resident_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    score(cfg, on_progress=lambda s: stage.__setitem__("now", s["stage"]))
    stop.set()
    thread.join()
    return peaks


if __name__ == "__main__":
    settings = ScoreConfig.from_dict(json.loads(Path(sys.argv[2]).read_text()))
    if sys.argv[1] == "plan":
        plan = make_plan(settings)
        print(json.dumps({s: plan.peak(s) for s in plan.stages}))
    else:
        print(json.dumps(measure(settings)))
