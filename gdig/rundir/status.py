"""Progress of a job, shared through status.json (DESIGN section 3): the stage, its counter, and the whole job's
fraction and ETA. A job declares a plan, the expected relative cost of each stage in order; the overall fraction
is the planned cost done, and the ETA extrapolates this process's own pace over what is left (so a resumed job
is not credited with the work an earlier process did). Torch-free: the app reads it on every poll."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdig.atomic import write_json_atomic
from gdig.cancel import Cancelled
from gdig.rundir.layout import CANCEL, PARTIAL, RANK_STATUS, STATUS


class Status:
    """status.json: {stage, done, total, started, updated, pid, error, plan, job_fraction, stage_seconds},
    replaced atomically (at most twice a second, and at every stage boundary). With several processes (`world`:
    rank and size) each rank but 0 writes its own counters to partial/, and rank 0 writes status.json with the
    sums of all ranks in its stage and each rank's counters under `ranks` (the ETA is the slowest rank's)."""

    def __init__(self, run_dir: Path, on_progress: Callable[[dict], None] | None = None, world=None):
        self.path = Path(run_dir) / STATUS
        self.rank, self.size = (world.rank, world.size) if world is not None else (0, 1)
        if self.rank:
            self.path = Path(run_dir) / PARTIAL / RANK_STATUS.format(rank=self.rank)
        self.shared_path = Path(run_dir) / STATUS
        self.cancel_path = Path(run_dir) / CANCEL
        self.started = time.time()
        self.on_progress = on_progress
        self.group = ""  # added to every stage's name while a run works on one module group (" [2/3]")
        self.state: dict[str, Any] = {}  # what status.json says (rank 0: every rank's counters summed)
        self.local: dict[str, Any] = {}  # this rank's own counters
        self._others: list[dict[str, Any]] = []
        self.plan: dict[str, float] = {}
        self.stage_seconds: dict[str, float] = {}
        self._last_write = 0.0
        self._stage_started = self.started
        self._stage_done_at_start = 0  # a resumed stage starts part done: its pace counts from here
        self._fraction_at_start: float | None = None
        previous = {} if self.rank else (_read_json(self.shared_path) or {})
        self._carried_fraction = float(previous.get("job_fraction", 0.0))  # shown until this job's plan is known

    def set_plan(self, plan: dict[str, float]) -> None:
        """Expected relative cost of each stage, in the order they run (stages not named count as free)."""
        self.plan = {k: max(float(v), 0.0) for k, v in plan.items()}

    def job_fraction(self, stage: str, done: int, total: int) -> float:
        """Share of the whole job done, by the plan's expected cost of each stage."""
        if stage == "done":
            return 1.0
        if stage not in self.plan or not sum(self.plan.values()):
            return float(self.state.get("job_fraction", self._carried_fraction))
        names = list(self.plan)
        before = sum(self.plan[s] for s in names[: names.index(stage)])
        current = self.plan[stage] * (min(done, total) / total if total > 0 else 0.0)
        return min((before + current) / sum(self.plan.values()), 1.0)

    def update(self, stage: str, done: int, total: int, error: str | None = None, force: bool = False) -> None:
        """Record progress (written twice a second at most, and at stage boundaries); Cancelled when asked to stop."""
        now = time.time()
        stage += self.group
        previous = self.local.get("stage")
        if stage != previous:
            if previous is not None:
                self.stage_seconds[previous] = self.stage_seconds.get(previous, 0.0) + now - self._stage_started
            self._stage_started = now
            self._stage_done_at_start = done
        self.local = {
            "stage": stage,
            "done": done,
            "total": total,
            "started": self.started,
            "updated": now,
            "stage_started": self._stage_started,
            "stage_done_at_start": self._stage_done_at_start,
            "pid": os.getpid(),
            "error": error,
        }
        self._publish(force or done in (0, total) or now - self._last_write > 0.5)

    def refresh(self) -> None:
        """Rewrite the status now (rank 0: with the other ranks' latest counters), e.g. while waiting for the
        other processes; Cancelled when asked to stop."""
        if self.local and time.time() - self._last_write > 0.5:
            self._publish(write=True)
        elif self.cancel_path.exists():
            raise Cancelled("cancelled by the user")

    def _publish(self, write: bool) -> None:
        """Sum the counters (rank 0 reads the others' when it writes), write when asked, tell on_progress, and
        raise Cancelled when a cancel file appeared."""
        if write and self.size > 1 and not self.rank:
            self._others = self._read_others()
        self.state = self._summed()
        if write:
            self._write()
        if self.on_progress is not None:
            self.on_progress(dict(self.state))
        if self.cancel_path.exists():
            raise Cancelled("cancelled by the user")

    def _summed(self) -> dict[str, Any]:
        """This rank's state; rank 0's with every rank's counters in its stage added and all ranks listed, and
        the job's fraction."""
        state = dict(self.local)
        if self.rank:
            return state
        if self.size > 1:
            ranks = [_counters(0, state)] + self._others
            same = [c for c in ranks if c["stage"] == state["stage"]]
            state |= {"done": sum(c["done"] for c in same), "total": sum(c["total"] for c in same), "ranks": ranks}
            state["stage_done_at_start"] = sum(c.get("stage_done_at_start") or 0 for c in same)
        fraction = self.job_fraction(state["stage"], state["done"], state["total"])
        if self._fraction_at_start is None and self.plan:
            self._fraction_at_start = fraction
        return state | {
            "plan": self.plan,
            "job_fraction": fraction,
            "job_fraction_at_start": self._fraction_at_start or 0.0,
            "stage_seconds": self.stage_seconds,
        }

    def _read_others(self) -> list[dict[str, Any]]:
        folder = self.shared_path.parent / PARTIAL
        found = (_read_json(folder / RANK_STATUS.format(rank=r)) for r in range(1, self.size))
        return [_counters(r, c) for r, c in enumerate(found, start=1) if c]

    def _write(self) -> None:
        if self.rank:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.size > 1 and self._failed_elsewhere(_read_json(self.shared_path) or {}):
            return  # another rank said why the job stops: keep its words
        write_json_atomic(self.path, self.state)
        self._last_write = time.time()

    def fail(self, error: str) -> None:
        """Record in status.json why the job stopped (keeping where it stopped). With several processes the first
        rank to fail says why (`rank R of N: ...`); the others' later errors are its consequences."""
        now = time.time()
        current = _read_json(self.shared_path) or {}
        if self.size > 1:
            if self._failed_elsewhere(current):
                return
            error = error if error == "cancelled" else f"rank {self.rank} of {self.size}: {error}"
        state = (current if self.rank else self.state) or {
            "stage": "load",
            "done": 0,
            "total": 1,
            "started": self.started,
        }
        write_json_atomic(self.shared_path, state | {"error": error, "updated": now, "pid": os.getpid()})

    def _failed_elsewhere(self, current: dict[str, Any]) -> bool:
        """Whether status.json (as read: `current`) already holds an error of this job, from another rank."""
        return bool(current.get("error")) and float(current.get("updated", 0)) >= self.started


def _counters(rank: int, state: dict[str, Any]) -> dict[str, Any]:
    keys = ("stage", "done", "total", "stage_started", "stage_done_at_start", "updated")
    return {"rank": rank} | {k: state.get(k) for k in keys}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The last status.json of a run, or None when it has none yet (or it cannot be read)."""
    return _read_json(Path(run_dir) / STATUS)


def mark_starting(run_dir: str | Path) -> None:
    """A fresh "starting" status before a worker starts: a resumed job must not look like the failure it
    resumes until its worker writes its own, nor start again from 0%: the share it stopped at is kept (the
    worker's Status carries it until its plan is known)."""
    now = time.time()
    fraction = float((read_status(run_dir) or {}).get("job_fraction", 0.0))
    state = {"stage": "starting", "done": 0, "total": 1, "started": now, "updated": now, "pid": None, "error": None}
    write_json_atomic(Path(run_dir) / STATUS, state | {"job_fraction": fraction})


def request_cancel(run_dir: str | Path) -> None:
    """Ask the job in run_dir to stop between batches (it raises Cancelled at its next status update)."""
    (Path(run_dir) / CANCEL).touch()


def clear_cancel(run_dir: str | Path) -> None:
    """Forget an earlier cancel request, before a job (re)starts."""
    (Path(run_dir) / CANCEL).unlink(missing_ok=True)


@contextmanager
def interrupt_cancels(run_dir: str | Path) -> Iterator[None]:
    """For a job in the foreground: the first Ctrl-C (SIGINT) asks it to stop between batches, as the app's Cancel
    does, so that the fit's partial sums and the finished chunks are kept for --resume; a second Ctrl-C stops at
    once. The request is removed when the job ends, so --resume starts clean."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # not ours to handle: a worker thread, or a job started with SIGINT ignored (nohup, background)
        return
    asked = []

    def first(signum, frame):
        if not Path(run_dir).is_dir():  # nothing written yet: nothing to keep
            raise KeyboardInterrupt
        request_cancel(run_dir)
        asked.append(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\ngdig: stopping after this batch, keeping what is done (Ctrl-C again: at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if asked:
            clear_cancel(run_dir)


@dataclass
class Eta:
    """Rate and time left, for the stage in progress and for the whole job (None until measurable)."""

    rate: float | None  # items per second in the current stage
    stage_seconds: float | None
    job_fraction: float
    job_seconds: float | None


def estimate(state: dict[str, Any]) -> Eta:
    """ETAs from one status.json snapshot."""
    done, total = int(state.get("done", 0)), int(state.get("total", 0))
    started, updated = state.get("stage_started") or state.get("started"), state.get("updated")
    rate = stage_eta = job_eta = None
    moved = done - int(state.get("stage_done_at_start") or 0)  # a resumed stage's restored part is not pace
    if started and updated and moved > 0 and updated > started:
        rate = moved / (updated - started)
        stage_eta = (total - done) / rate
    slowest = [_rank_eta(r) for r in state.get("ranks", []) if r.get("stage") == state.get("stage")]
    if any(e is not None for e in slowest):
        stage_eta = max(e for e in slowest if e is not None)
    fraction = float(state.get("job_fraction", 0.0))
    gained = fraction - float(state.get("job_fraction_at_start", 0.0))
    if state.get("started") and updated and gained > 0.005 and fraction < 1.0:
        job_eta = (updated - state["started"]) * (1.0 - fraction) / gained
    return Eta(rate, stage_eta, fraction, job_eta)


def _rank_eta(counters: dict[str, Any]) -> float | None:
    """One rank's time left in its stage, from its own pace."""
    done, total = int(counters.get("done") or 0), int(counters.get("total") or 0)
    started, updated = counters.get("stage_started"), counters.get("updated")
    moved = done - int(counters.get("stage_done_at_start") or 0)
    if not (started and updated and updated > started) or moved <= 0:
        return None if done < total else 0.0
    return (total - done) * (updated - started) / moved


def format_seconds(seconds: float) -> str:
    """A duration as a person reads it: 4.2 s, 42 s, 4 min 02 s, 1 h 05 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def summary_line(state: dict[str, Any], run_dir: str | Path) -> str:
    """One line for the end of a job: time per stage and the files written, with sizes."""
    stages = " · ".join(f"{k} {format_seconds(v)}" for k, v in state.get("stage_seconds", {}).items())
    total = float(state.get("updated", 0) - state.get("started", 0))
    files = sorted(p for p in Path(run_dir).iterdir() if p.is_file() and not p.name.startswith("."))
    listed = ", ".join(f"{p.name} ({_size(p.stat().st_size)})" for p in files if p.suffix not in (".log", ".lock"))
    return f"done in {format_seconds(total)} ({stages}); wrote {listed}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
