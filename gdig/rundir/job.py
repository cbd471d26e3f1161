"""The files of the app's background job in a run folder: job-settings.json (what the worker runs), job.json
(its pid, command and process count, written once it is started) and worker.log (its output)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from gdig.atomic import write_json_atomic
from gdig.rundir.layout import JOB, JOB_SETTINGS, WORKER_LOG


def write_job_settings(run_dir: Path, settings: dict[str, Any]) -> Path:
    """Save the settings the worker will run with; returns the file's path (the worker's argument)."""
    path = Path(run_dir) / JOB_SETTINGS
    write_json_atomic(path, settings)
    return path


def read_job_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings a job was started with, or None when there are none (or they cannot be read)."""
    try:
        return json.loads((Path(run_dir) / JOB_SETTINGS).read_text())
    except (OSError, ValueError):
        return None


def open_worker_log(run_dir: Path) -> IO[bytes]:
    """worker.log opened for appending (the caller hands it to the worker process)."""
    return open(Path(run_dir) / WORKER_LOG, "ab")  # noqa: SIM115 - handed to the child


def worker_log_tail(run_dir: Path, lines: int) -> list[str]:
    """The last `lines` lines of worker.log ([] when there is none)."""
    try:
        return (Path(run_dir) / WORKER_LOG).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return []


def write_job_record(run_dir: Path, pid: int, cmd: list[str], processes: int) -> None:
    """job.json: the started worker's pid, command and process count."""
    write_json_atomic(Path(run_dir) / JOB, {"pid": pid, "started": time.time(), "cmd": cmd, "processes": processes})


def read_job_record(run_dir: Path) -> dict[str, Any] | None:
    """job.json, or None when no job was started (or the file cannot be read)."""
    try:
        record = json.loads((Path(run_dir) / JOB).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def job_started(run_dir: Path) -> bool:
    """Whether the app started a job in this folder (job.json exists)."""
    return (Path(run_dir) / JOB).exists()
