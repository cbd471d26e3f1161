"""Progress of a job (gdig.rundir.status): a resumed stage's pace counts only the work done since it resumed,
and the whole job's share is the one it stopped at until the new job's plan is known."""

from __future__ import annotations

from gdig.rundir.status import Status, estimate, mark_starting, read_status


def test_a_resumed_stage_counts_its_pace_from_where_it_resumed(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("gdig.rundir.status.time.time", lambda: clock[0])
    status = Status(tmp_path)
    status.update("fit_covariance", 680, 1500, force=True)  # 680 batches restored from the checkpoint
    clock[0] += 10.0
    status.update("fit_covariance", 700, 1500, force=True)  # 20 done in 10 s
    eta = estimate(read_status(tmp_path))
    assert eta.rate == 2.0 and eta.stage_seconds == 400.0  # not 70/s and 11 s: the restored 680 are not pace


def test_a_resumed_job_shows_the_share_it_stopped_at_until_its_plan_is_known(tmp_path):
    first = Status(tmp_path)
    first.set_plan({"load": 1.0, "fit_covariance": 3.0})
    first.update("fit_covariance", 1, 2, force=True)
    assert read_status(tmp_path)["job_fraction"] == 0.625
    resumed = Status(tmp_path)  # loading the model again: no plan yet
    resumed.update("load", 0, 1, force=True)
    assert read_status(tmp_path)["job_fraction"] == 0.625  # not "0%"


def test_the_apps_starting_status_keeps_the_share_a_resumed_job_stopped_at(tmp_path):
    """The app writes "starting" before its worker: that status kept no share, so a resume read 0% again."""
    first = Status(tmp_path)
    first.set_plan({"load": 1.0, "fit_covariance": 3.0})
    first.update("fit_covariance", 1, 2, force=True)
    mark_starting(tmp_path)
    assert read_status(tmp_path)["stage"] == "starting" and read_status(tmp_path)["job_fraction"] == 0.625
    Status(tmp_path).update("load", 0, 1, force=True)
    assert read_status(tmp_path)["job_fraction"] == 0.625
    (tmp_path / "new").mkdir()
    mark_starting(tmp_path / "new")  # a new run starts at 0
    assert read_status(tmp_path / "new")["job_fraction"] == 0.0
