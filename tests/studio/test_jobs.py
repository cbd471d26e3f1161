"""The app's background worker: a real `python -m gdig worker` process, followed through status.json."""

from __future__ import annotations

import json
import time

import numpy as np

from gdig.config import ScoreConfig
from gdig.studio.jobs import cancel_job, job_state, list_runs, start_job


def _wait(run_dir, until, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(run_dir)
        if until(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"timed out; last state {job_state(run_dir)}")


def test_worker_runs_in_the_background_and_finishes(tmp_path, llama_dir, data_files):
    cands, seeds = data_files
    cfg = ScoreConfig(
        model=str(llama_dir),
        candidates=str(cands),
        seeds=str(seeds),
        out=str(tmp_path / "runs" / "a"),
        sketch_dim=32,
        umap=False,
    )
    run_dir = start_job(cfg)
    assert job_state(run_dir).running or job_state(run_dir).finished
    state = _wait(run_dir, lambda s: s.finished or s.error)
    assert state.finished and state.error is None and state.fraction == 1.0
    assert np.load(run_dir / "influence.npy").shape == (24, 5)
    assert [r["state"] for r in list_runs(tmp_path / "runs")] == ["finished"]


def test_cancel_stops_the_worker_and_says_so(tmp_path, llama_dir, data_files):
    cands, seeds = data_files
    cfg = ScoreConfig(
        model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "b"), umap=False
    )
    run_dir = start_job(cfg)
    cancel_job(run_dir, grace_seconds=60)
    state = _wait(run_dir, lambda s: not s.running)
    assert not state.finished and state.error == "cancelled"
    assert not (run_dir / "influence.npy").exists()


def test_a_job_of_two_processes_runs_under_torchrun_and_cancels_like_one(tmp_path, llama_dir, data_files):
    import json

    from gdig.studio.jobs import start_new_run

    cands, seeds = data_files
    settings = {"sketch_dim": 32}
    run_dir = start_new_run(tmp_path / "runs", "two", str(llama_dir), [str(cands), str(seeds)], settings, processes=2)
    assert "torch.distributed.run" in json.loads((run_dir / "job.json").read_text())["cmd"]
    state = _wait(run_dir, lambda s: s.finished or s.error)
    assert state.finished and state.error is None
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert np.load(run_dir / "influence.npy").shape == (24, 5)

    cfg = ScoreConfig(model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "c"))
    run_dir = start_job(cfg, processes=2)
    _wait(run_dir, lambda s: s.stage not in ("starting", "load") or s.error)
    cancel_job(run_dir, grace_seconds=60)
    state = _wait(run_dir, lambda s: not s.running)
    assert not state.finished and state.error == "cancelled"


def test_a_finished_worker_not_yet_reaped_by_the_app_counts_as_stopped(tmp_path):
    """The app server starts the workers, so a finished one stays a zombie of the server until reaped; seen from
    another process (a second session, the CLI, a test) it had counted as running: cancel_job then waited its
    whole grace period and job_state said "running"."""
    import subprocess
    import sys

    from gdig.rundir.layout import JOB
    from gdig.studio.jobs import pid_alive

    script = "import subprocess, sys, time; p = subprocess.Popen(['true']); print(p.pid, flush=True); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.time() + 10
        while pid_alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child)  # a zombie of the parent, never reaped while it sleeps
        assert pid_alive(parent.pid)
        (tmp_path / JOB).write_text(json.dumps({"pid": child}))
        started = time.time()
        cancel_job(tmp_path, grace_seconds=30)  # the worker has stopped: no grace period to wait out
        assert time.time() - started < 5
    finally:
        parent.kill()
        parent.wait()
