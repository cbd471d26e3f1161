"""Do WMT21's de->en segment DA scores follow the text under any join? A check of the shared data's labels
against the source repository (bench/README.md, Adequacy).

Joins `humaneval/newstest2021-toen/ad-seg-scores-de-en.csv` to the system outputs of `txt/` (newstest2021 only)
and `txt-ts/` (with the test suites), reading the segment id as a 0- or 1-based line, and reports (a) the
pairwise accuracy of sentence chrF against reference A at a 20-point DA gap and (b) the mean DA gap of identical
against different outputs of one source (for `txt/`, the id shifted by -1, 0 and +1). Scores that follow the
text give (a) above 0.5 and (b) a smaller gap for identical outputs.

    python bench/wmt21_rejoin.py REPO   # REPO: a checkout of github.com/wmt-conference/wmt21-news-systems
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import numpy as np

SCORES = "humaneval/newstest2021-toen/ad-seg-scores-de-en.csv"
NAMES = {"Nemo": "NVIDIA-NeMo"}


def read(repo: Path, path: str) -> list[str]:
    """A file of the repository's HEAD (a bare mirror or a checkout)."""
    out = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, text=True, check=True)
    return out.stdout.split("\n")


def joined(repo: Path, folder: str, offset: int) -> dict[str, list[tuple[float, str, str]]]:
    """Segment id -> (DA, output, reference A) of every system, the id read as line id + offset."""
    ref = read(repo, f"{folder}/references/newstest2021.de-en.ref.A.en")
    outputs: dict[str, list[str]] = {}
    segments = collections.defaultdict(list)
    for line in read(repo, SCORES)[1:]:
        if not line.strip():
            continue
        system, sid, raw, *_ = line.split()
        name = NAMES.get(system.split(".")[0], system.split(".")[0])
        if name == "HUMAN":
            continue
        if name not in outputs:
            outputs[name] = read(repo, f"{folder}/system-outputs/newstest2021.de-en.hyp.{name}.en")
        at = int(sid) + offset
        if 0 <= at < len(ref):
            segments[sid].append((float(raw), outputs[name][at].strip(), ref[at]))
    return segments


def chrf_accuracy(segments, gap: float = 20, limit: int = 400) -> float:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    agree = pairs = 0
    for rows in list(segments.values())[:limit]:
        scored = [(da, chrf.sentence_score(hyp, [ref]).score, hyp) for da, hyp, ref in rows]
        for a in scored:
            for b in scored:
                if a[2] != b[2] and a[0] - b[0] >= gap:
                    pairs += 1
                    agree += (a[1] > b[1]) + 0.5 * (a[1] == b[1])
    return agree / max(pairs, 1)


def identical_gap(segments) -> tuple[float, float]:
    same, other = [], []
    for rows in segments.values():
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                (same if a[1] == b[1] else other).append(abs(a[0] - b[0]))
    return float(np.mean(same)), float(np.mean(other))


def main() -> None:
    repo = Path(sys.argv[1])
    for folder, offset in (("txt", -1), ("txt", 0), ("txt-ts", -1), ("txt-ts", 0)):
        accuracy = chrf_accuracy(joined(repo, folder, offset))
        print(f"{folder}, id {offset:+d}: chrF vs reference A at a 20-point gap {accuracy:.3f}")
    for offset in (-1, 0, 1):
        same, other = identical_gap(joined(Path(repo), "txt", offset))
        print(f"txt, id {offset:+d}: mean DA gap, identical outputs {same:.2f}, different outputs {other:.2f}")


if __name__ == "__main__":
    main()
