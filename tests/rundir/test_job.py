"""The app's job files in a run folder (gdig.rundir.job): written and read back, and what a missing or damaged
file reads as."""

from __future__ import annotations

from gdig.rundir import job
from gdig.rundir.layout import JOB, JOB_SETTINGS


def test_the_job_files_round_trip_and_a_missing_or_damaged_one_reads_as_none(tmp_path):
    assert job.read_job_record(tmp_path) is None and job.read_job_settings(tmp_path) is None
    assert not job.job_started(tmp_path) and job.worker_log_tail(tmp_path, 3) == []
    path = job.write_job_settings(tmp_path, {"model": "m", "seed_batch": 1})
    assert path == tmp_path / JOB_SETTINGS and job.read_job_settings(tmp_path) == {"model": "m", "seed_batch": 1}
    job.write_job_record(tmp_path, 4242, ["python", "-m", "x"], 2)
    record = job.read_job_record(tmp_path)
    assert (record["pid"], record["cmd"], record["processes"]) == (4242, ["python", "-m", "x"], 2)
    assert job.job_started(tmp_path) and record["started"] > 0
    (tmp_path / JOB).write_text("{not json")
    assert job.read_job_record(tmp_path) is None
    (tmp_path / JOB).write_text("[1, 2]")
    assert job.read_job_record(tmp_path) is None  # valid JSON, not a record


def test_the_worker_log_is_appended_and_its_tail_read(tmp_path):
    for text in (b"one\ntwo\n", b"three\nfour\n"):
        with job.open_worker_log(tmp_path) as log:
            log.write(text)
    assert job.worker_log_tail(tmp_path, 3) == ["two", "three", "four"]
