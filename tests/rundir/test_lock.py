"""One writer per run (gdig.rundir.lock): a second job on a run being written is refused with the running job's
name, from `gdig score` (with or without --resume), `gdig index` and the app; a killed job leaves no lock."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gdig.config import ScoreConfig
from gdig.pipeline.run import score
from gdig.rundir.lock import RunLockedError, lock_holder, writer_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from gdig.rundir.lock import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.fixture()
def holder(tmp_path):
    """Another process writing tmp_path/run (it holds the lock until killed)."""
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.kill()
    proc.wait()


def _cfg(run: Path, files) -> ScoreConfig:
    cands, seeds = files
    return ScoreConfig(model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(run), umap=False)


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_score_on_a_run_being_written_is_refused_naming_the_job(holder, data_files, model, tokenizer, resume):
    run, proc = holder
    with pytest.raises(RunLockedError, match=rf"being written by another job \(pid {proc.pid} on .*-c"):
        score(_cfg(run, data_files), resume=resume, model=model, tokenizer=tokenizer)
    assert sorted(p.name for p in run.iterdir()) == ["writer.lock"]  # nothing written
    assert f"pid {proc.pid}" in lock_holder(run)


def test_the_app_refuses_to_start_a_job_on_a_run_written_from_a_terminal(holder, data_files):
    from gdig.studio.jobs import start_job

    run, proc = holder
    with pytest.raises(ValueError, match=f"being written by another job \\(pid {proc.pid}"):
        start_job(_cfg(run, data_files))
    assert sorted(p.name for p in run.iterdir()) == ["writer.lock"]


def test_a_killed_job_leaves_no_lock(holder):
    run, proc = holder
    assert lock_holder(run) is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock_holder(run) is None
    with writer_lock(run):  # the next job takes it
        assert lock_holder(run) is not None


def test_a_scoring_run_holds_the_lock_while_it_writes_and_gives_it_back(tmp_path, data_files, model, tokenizer):
    seen = []
    run = tmp_path / "run"
    score(_cfg(run, data_files), model=model, tokenizer=tokenizer, on_progress=lambda s: seen.append(lock_holder(run)))
    assert seen and all(h is not None and "pid" in h for h in seen)
    assert lock_holder(run) is None
    from gdig.rundir.status import read_status, summary_line

    line = summary_line(read_status(run), run)  # the CLI's last line lists the run's files, not its lock
    assert "influence.npy" in line and "writer.lock" not in line


def test_indexing_a_run_being_written_is_refused(tmp_path, data_files, model, tokenizer):
    from gdig.pipeline.index_run import build_index

    run = tmp_path / "run"
    score(dataclasses.replace(_cfg(run, data_files), index_dim=0), model=model, tokenizer=tokenizer)
    with writer_lock(run), pytest.raises(RunLockedError, match="being written by another job"):
        build_index(run, index_dim=64, model=model, tokenizer=tokenizer)
