"""Shared benchmark inputs: real pairs from ../shared/data when present, a tiny Llama trained on nothing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdig.atomic import write_jsonl  # noqa: E402,F401 - the benchmarks write their data with it

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GDIG_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "bench" / ".cache"
REPORTS = ROOT / "bench" / "reports"


def have_shared_data() -> bool:
    return (SHARED_DATA / "tatoeba" / "deu-eng").is_dir() and (SHARED_DATA / "flores200" / "dev").is_dir()


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def tatoeba_pairs(n: int, offset: int = 0) -> list[dict]:
    d = SHARED_DATA / "tatoeba" / "deu-eng"
    en, de = read_lines(d / "tatoeba-test-v2021-08-07.eng"), read_lines(d / "tatoeba-test-v2021-08-07.deu")
    pairs = [p for p in zip(en, de, strict=True) if p[0].strip() and p[1].strip()][offset : offset + n]
    return [{"src_text": s, "trg_text": t, "src_lang": "en", "trg_lang": "de"} for s, t in pairs]


def flores_pairs(n: int, split: str = "dev") -> list[dict]:
    d = SHARED_DATA / "flores200" / split
    en, de = read_lines(d / f"eng_Latn.{split}"), read_lines(d / f"deu_Latn.{split}")
    return [{"src_text": s, "trg_text": t, "src_lang": "en", "trg_lang": "de"} for s, t in zip(en, de, strict=True)][:n]


ONE_B = {"hidden": 2048, "ffn": 8192, "layers": 16, "heads": 32}  # Llama-3.2-1B's shape (random weights)


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    import random

    en = [
        "the",
        "a",
        "cat",
        "dog",
        "house",
        "tree",
        "sees",
        "runs",
        "big",
        "small",
        "red",
        "green",
        "river",
        "sun",
        "moon",
        "eats",
        "water",
    ]
    de = [
        "der",
        "ein",
        "Katze",
        "Hund",
        "Haus",
        "Baum",
        "sieht",
        "läuft",
        "groß",
        "klein",
        "rot",
        "grün",
        "Fluss",
        "Sonne",
        "Mond",
        "isst",
        "Wasser",
    ]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        idx = [rng.randrange(len(en)) for _ in range(rng.randint(3, 20))]
        out.append(
            {
                "src_text": " ".join(en[i] for i in idx),
                "trg_text": " ".join(de[i] for i in idx),
                "src_lang": "en",
                "trg_lang": "de",
            }
        )
    return out


def add_workload_args(ap, repeats: int) -> None:
    """The engine workload shared by the engine and kronfluence benchmarks."""
    ap.add_argument("--candidates", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=repeats)


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_child(args: list[str]) -> dict:
    """Run this script's child mode in a fresh process; it prints one JSON line last."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_stem(name: str, day: str) -> Path:
    """bench/reports/NAME[-TAG]-DATE: `run_all.py --quick` sets GDIG_BENCH_TAG=quick so that quick reports never
    overwrite full ones."""
    tag = os.environ.get("GDIG_BENCH_TAG")
    return REPORTS / f"{name}{'-' + tag if tag else ''}-{day}"


def save_report(name: str, report: dict, text: str) -> Path:
    """report_stem(NAME, report's date).{json,md}."""
    stem = report_stem(name, report["date"])
    REPORTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text if text.endswith("\n") else text + "\n")
    return stem


def timed(fn, repeats: int = 3) -> float:
    """The median wall time of fn() over `repeats` calls (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
