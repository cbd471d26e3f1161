"""The Compare page driven by AppTest: it agrees with `gdig compare`, lists the pairs in one selection only, and
Train and compare starts `gdig evaluate` in the background and shows its report (or refuses bad input)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_pairs, write_jsonl
from gdig.__main__ import main
from gdig.config import ScoreConfig
from gdig.outputs.export import save_into_run
from gdig.pipeline.run import score
from gdig.rundir.layout import EVALUATIONS
from gdig.rundir.results import load_run
from gdig.selection.select import SelectionConfig, select_run
from gdig.studio.jobs import job_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    pool = make_pairs(40, seed=31)
    for i, r in enumerate(pool):
        r["corruption"] = "truncated" if i % 4 == 0 else None
    cands = write_jsonl(data / "c.jsonl", pool)
    write_jsonl(data / "test.jsonl", make_pairs(4, seed=33))  # beside the pool: the page's default test file
    seeds = write_jsonl(data / "s.jsonl", make_pairs(5, seed=32))
    cfg = ScoreConfig(model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(root / "r"), sketch_dim=32)
    score(cfg)
    return root


@pytest.fixture()
def page(runs, monkeypatch):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(runs))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run_name"] = "r"
    at.run()
    at.switch_page("app_pages/compare.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_page_agrees_with_the_cli(page, runs, capsys):
    page.selectbox(key="cmp_a").set_value("Default rule")
    page.selectbox(key="cmp_b").set_value("Length ratio")
    page.number_input(key="cmp_budget").set_value(12).run()
    assert not page.exception, page.exception
    assert main(["compare", str(runs / "r"), "default", "length-ratio", "--budget", "12", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    overlap = next(m.value for m in page.markdown if m.value.startswith("**Overlap**"))
    for region, count in cli["regions"].items():
        assert f"{region}: **{count:,}**" in overlap
    assert [m.value for m in page.metric] == ["12 pairs", "12 pairs"]
    kinds = next(d.value for d in page.dataframe if d.value.index.name == "kind")
    for name in ("default", "length-ratio"):
        assert {k: int(v) for k, v in kinds[name].items()} == {k: v[name] for k, v in cli["per_kind"].items()}
    only = page.dataframe(key="cmp_only_length-ratio").value
    assert len(only) == len(cli["only"]["length-ratio"]) and set(only["id"]) == set(cli["only"]["length-ratio"])


def test_train_and_compare_runs_in_the_background_and_shows_the_report(page, runs):
    page.selectbox(key="cmp_a").set_value("Default rule")
    page.number_input(key="cmp_budget").set_value(6).run()
    page.text_input(key="cmp_eval_name").set_value("first")
    page.number_input(key="cmp_eval_seeds").set_value(1)
    page.number_input(key="cmp_eval_tokens").set_value(3)
    _submit(page)
    folder = runs / "r" / EVALUATIONS / "first"
    assert (folder / "inputs" / "default.jsonl").exists() and (folder / "inputs" / "random.jsonl").exists()
    deadline = time.time() + 240
    while not (folder / "report.json").exists() and time.time() < deadline:
        assert not job_state(folder).error, job_state(folder).error
        time.sleep(1)
    page.run()
    assert not page.exception, page.exception
    table = next(d.value for d in page.dataframe if "pairs" in d.value.columns)
    assert table["selection"].tolist() == ["default", "random"] and table["pairs"].tolist() == [6, 6]
    assert any("one seed, no interval" in m.value for m in page.markdown)
    run = load_run(runs / "r")  # an export of the run carries the evaluation's figures in its manifest
    cfg = SelectionConfig(budget=6, clusters=2)
    _, manifest = save_into_run(run, select_run(run, cfg), cfg, "shipped")
    (evaluation,) = json.loads(manifest.read_text())["evaluations"]
    assert evaluation["name"] == "first" and evaluation["report"] == "evaluations/first/report.json"
    assert evaluation["means"]["default"]["chrf"] == pytest.approx(table_mean(table, "chrF"), abs=1e-3)


def test_bad_input_is_refused_and_nothing_is_left(page, runs):
    page.number_input(key="cmp_budget").set_value(6).run()
    page.text_input(key="cmp_eval_name").set_value("broken")
    page.text_input(key="cmp_eval_test").set_value(str(runs / "no-such-test.jsonl"))
    _submit(page)
    assert any("Not started" in e.value and "no-such-test.jsonl" in e.value for e in page.error)
    assert not (runs / "r" / EVALUATIONS / "broken").exists()
    page.text_input(key="cmp_eval_test").set_value(str(runs.parent / "data0" / "test.jsonl"))
    page.text_input(key="cmp_eval_model").set_value(str(runs / "no-such-model"))
    _submit(page)
    assert any("Not started" in e.value and "no-such-model" in e.value for e in page.error)
    assert not (runs / "r" / EVALUATIONS / "broken").exists()


def table_mean(table, column: str) -> float:
    return float(str(table[column].iloc[0]).split(" ")[0])


def _submit(at: AppTest) -> None:
    (button,) = [b for b in at.button if b.label.startswith("Train and compare")]
    button.click().run()
    assert not at.exception, at.exception


def test_a_cancelled_evaluation_says_so_and_resumes_from_the_page(page, runs):
    from gdig.outputs.compare import resolve
    from gdig.rundir.status import request_cancel
    from gdig.studio.evaluations import default_data, default_model, default_test, evaluation_config, start_evaluation

    run = load_run(runs / "r")
    cfg = evaluation_config(
        default_model(run)[0], default_test(run), data=default_data(run), seeds=1, max_new_tokens=3, batch_size=4
    )
    folder = start_evaluation(run, resolve(run, ["default", "random"], 6), "stopped", cfg)
    request_cancel(folder)  # before the worker's first step: it stops there, as after Cancel
    deadline = time.time() + 120
    while job_state(folder).running or not job_state(folder).error:
        assert time.time() < deadline, "the worker neither stopped nor failed"
        time.sleep(0.5)
    assert job_state(folder).error == "cancelled"
    page.run()
    assert any(w.value == "Stopped: cancelled" for w in page.warning)
    page.button(key=f"resume_{folder}").click().run()
    assert not page.exception, page.exception
    while not (folder / "report.json").exists():
        assert time.time() < deadline + 120 and not job_state(folder).error, job_state(folder).error
        time.sleep(0.5)
    page.run()
    assert any("stopped: finished" in e.label for e in page.expander)


def test_a_run_is_not_deleted_under_a_running_evaluation(runs, monkeypatch):
    import os
    import shutil

    shutil.copytree(runs / "r", runs / "busy", ignore=shutil.ignore_patterns(EVALUATIONS))
    folder = runs / "busy" / EVALUATIONS / "going"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"pid": os.getppid(), "started": time.time(), "cmd": []}))
    (folder / "status.json").write_text(json.dumps({"stage": "evaluate", "done": 1, "total": 9, "error": None}))
    monkeypatch.setenv("GDIG_RUNS_DIR", str(runs))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.selectbox(key="home_open").set_value("busy").run()
    assert any("going is running" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "home_delete"] and (runs / "busy").exists()
    shutil.rmtree(folder)  # no longer running: it can go
    at.run()
    at.button(key="home_delete").click().run()
    assert not (runs / "busy").exists()
