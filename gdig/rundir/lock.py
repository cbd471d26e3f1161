"""One writer per run: a job holds an exclusive advisory lock (flock) on the run's writer.lock for as long as it
writes; the kernel drops the lock when the process ends, however it ends (SIGKILL included), so a dead job never
locks a run. The file names the holder, so a refused job can say which job is running."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gdig.rundir.layout import WRITER_LOCK, RunExistsError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run is then only guarded by its files
    fcntl = None


class RunLockedError(RunExistsError):
    """The run is being written by another job (named)."""


@contextmanager
def writer_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's writer lock for the block; RunLockedError naming the holder when another job has it."""
    path = Path(run_dir) / WRITER_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(_refusal(run_dir, path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me()).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(run_dir: str | Path) -> str | None:
    """Who is writing the run now (None when nobody is): the check the app makes before starting a job."""
    path = Path(run_dir) / WRITER_LOCK
    if fcntl is None or not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(path)
    finally:
        os.close(fd)
    return None


def _refusal(run_dir: str | Path, path: Path) -> str:
    return (
        f"{run_dir} is being written by another job ({_describe(path)}); wait for it to finish, or stop it "
        "(Cancel on the app's run page, Ctrl-C in its terminal) and then continue with --resume"
    )


def _describe(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["started"]))
        return f"pid {who['pid']} on {who['host']}, started {started}: {who['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a job whose details could not be read"


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
