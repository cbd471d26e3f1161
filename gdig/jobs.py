"""Background worker processes for the app: start `gdig score` detached from the Streamlit script, follow it
through status.json, cancel it. A reload or a second tab re-attaches because all state is on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdig.config import ScoreConfig, write_json_atomic
from gdig.run import read_status

JOB_FILE = "job.json"
LOG_FILE = "worker.log"
STALE_SECONDS = 30.0  # a status not updated for this long, with a dead pid, is a crashed worker


@dataclass
class JobState:
    run_dir: Path
    stage: str
    done: int
    total: int
    error: str | None
    running: bool
    finished: bool
    rate: float | None  # items per second in the current stage
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as dead
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def start_job(cfg: ScoreConfig, resume: bool = False) -> Path:
    """Write the settings, then run `python -m gdig score` in its own session (it outlives the page)."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job_state(run_dir).running:
        raise ValueError(f"{run_dir} already has a running job")
    (run_dir / "cancel").unlink(missing_ok=True)
    settings = run_dir / "job-settings.json"
    write_json_atomic(settings, cfg.to_dict())
    cmd = [sys.executable, "-m", "gdig.jobs", str(settings)] + (["--resume"] if resume else [])
    return _spawn(run_dir, cmd)


def start_demo_job(run_dir: str | Path, cache: str | None = None) -> Path:
    """Build the built-in demo (`gdig demo`) in the background into run_dir."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job_state(run_dir).running:
        return run_dir
    (run_dir / "cancel").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "gdig", "demo", "--out", str(run_dir)] + (["--cache", cache] if cache else [])
    return _spawn(run_dir, cmd)


def _spawn(run_dir: Path, cmd: list[str]) -> Path:
    log = open(run_dir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root, env=env,
                            start_new_session=True)  # fmt: skip
    write_json_atomic(run_dir / JOB_FILE, {"pid": proc.pid, "started": time.time(), "cmd": cmd})
    return run_dir


def run_worker(settings_path: str | Path, resume: bool = False) -> int:
    """Entry point of the worker process: `python -m gdig.jobs SETTINGS.json [--resume]`."""
    from gdig.run import score

    cfg = ScoreConfig.from_dict(json.loads(Path(settings_path).read_text()))
    score(cfg, resume=resume)
    return 0


def cancel_job(run_dir: str | Path, grace_seconds: float = 10.0) -> None:
    """Ask the worker to stop between batches; terminate it if it does not within the grace period."""
    run_dir = Path(run_dir)
    (run_dir / "cancel").touch()
    pid = _job_pid(run_dir)
    deadline = time.time() + grace_seconds
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGTERM)


def _job_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / JOB_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        status = read_status(run_dir)
        return status.get("pid") if status else None


def job_state(run_dir: str | Path) -> JobState:
    run_dir = Path(run_dir)
    st: dict[str, Any] = read_status(run_dir) or {}
    finished = st.get("stage") == "done" and not st.get("error")
    alive = pid_alive(_job_pid(run_dir)) or (pid_alive(st.get("pid")) and st.get("pid") != os.getpid())
    running = alive and not finished and not st.get("error")
    error = st.get("error")
    started_job = (run_dir / JOB_FILE).exists()
    if not finished and not running and not error and (st or started_job):
        error = "the worker stopped without finishing" + _log_tail(run_dir)
    done, total = int(st.get("done", 0)), int(st.get("total", 0))
    rate = eta = None
    started, updated = st.get("stage_started") or st.get("started"), st.get("updated")
    if running and started and updated and done > 0 and updated > started:
        rate = done / (updated - started)
        eta = (total - done) / rate if rate > 0 else None
    return JobState(run_dir, st.get("stage", "not started"), done, total, error, running, finished, rate, eta)


def _log_tail(run_dir: Path, lines: int = 3) -> str:
    try:
        tail = (run_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(tail)) if tail else ""


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Run folders under root, newest first, with their state."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and ((d / "status.json").exists() or (d / "config.json").exists()):
            state = job_state(d)
            label = "finished" if state.finished else "running" if state.running else "failed" if state.error else "?"
            out.append({"name": d.name, "path": d, "state": label, "mtime": d.stat().st_mtime, "job": state})
    return sorted(out, key=lambda r: -r["mtime"])


if __name__ == "__main__":
    sys.exit(run_worker(sys.argv[1], resume="--resume" in sys.argv[2:]))
