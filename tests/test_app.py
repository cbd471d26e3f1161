"""The Streamlit app driven by AppTest on a small finished run: every page, the controls, and failure messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_pairs, write_jsonl
from gdig.config import ScoreConfig
from gdig.run import score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    cands = write_jsonl(data / "c.jsonl", make_pairs(40, seed=11))
    seeds = write_jsonl(data / "s.jsonl", make_pairs(6, seed=12))
    cfg = ScoreConfig(model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(root / "demo"),
                      sketch_dim=64, hessian="kfac")  # fmt: skip
    score(cfg)
    return root


@pytest.fixture()
def app(runs, monkeypatch):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(runs))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run_path"] = str(runs / "demo")
    return at


def _page(at: AppTest, page: str) -> AppTest:
    at.run()
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_runs_page_lists_the_run(app):
    at = _page(app, "home")
    assert "demo" in at.dataframe[0].value["run"].tolist()
    assert at.dataframe[0].value["state"].tolist() == ["finished"]


def test_influence_tau_changes_the_counts(app):
    at = _page(app, "influence")
    strict = int(_metric(at, "Kept").replace(",", ""))
    at.slider(key="w_tau").set_value(0.0).run()
    assert not at.exception
    assert int(_metric(at, "Kept").replace(",", "")) == 40 > strict
    at.radio(key="w_rule").set_value("mean influence").run()
    at.number_input(key="w_min_mean").set_value(1e9).run()
    assert _metric(at, "Kept") == "0"


def test_clusters_k_reclusters(app):
    app.session_state["_tau"] = 0.0
    at = _page(app, "clusters")
    first = len(at.dataframe[0].value)
    at.slider(key="w_clusters").set_value(3).run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 3 != first
    assert at.dataframe[1].value["cluster"].nunique() == 3


def test_explore_include_exclude_persist(app, runs):
    app.session_state["_tau"] = 1.0
    at = _page(app, "explore")
    target = at.selectbox(key="ex_id").options[-1]
    at.selectbox(key="ex_id").set_value(target).run()
    at.button(key="ov_include").click().run()
    assert not at.exception
    saved = json.loads((runs / "demo" / "overrides.json").read_text())
    assert saved["include"] == [target]
    at.selectbox(key="ex_show").set_value("included by hand").run()
    assert at.dataframe[0].value["id"].tolist() == [target]
    at.selectbox(key="ex_id").set_value(target).run()
    at.button(key="ov_None").click().run()
    assert json.loads((runs / "demo" / "overrides.json").read_text())["include"] == []


def test_explore_token_heatmap_renders_escaped_text(app):
    app.session_state["_tau"] = 0.0
    at = _page(app, "explore")
    at.button(key="ex_tokens").click().run()
    assert not at.exception
    assert "Contributions sum to" in at.caption[-1].value


def test_export_writes_the_expected_jsonl(app, runs):
    app.session_state["_tau"] = 0.0
    at = _page(app, "export")
    at.number_input(key="w_budget").set_value(7).run()
    at.text_input(key="exp_name").set_value("picked").run()
    at.button(key="exp_save").click().run()
    assert not at.exception
    out = runs / "demo" / "selections" / "picked.jsonl"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 7 and all("src_text" in r and "gdig" in r for r in lines)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["counts"]["selected"] == 7


@pytest.mark.parametrize("page", ["influence", "clusters", "explore", "export"])
def test_pages_without_a_run_show_a_hint(runs, monkeypatch, page, tmp_path):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at = _page(at, page)
    assert any("Choose a run" in i.value for i in at.info)


def test_missing_run_file_is_a_clear_message(app, runs, tmp_path):
    import shutil

    broken = runs / "broken"
    shutil.copytree(runs / "demo", broken)
    (broken / "sketch.npy").unlink()
    app.session_state["run_path"] = str(broken)
    at = _page(app, "influence")
    assert any("missing sketch.npy" in w.value for w in at.warning)
    shutil.rmtree(broken)


def test_failed_worker_is_shown_in_plain_words(app, runs):
    failed = runs / "failed"
    failed.mkdir()
    (failed / "status.json").write_text(json.dumps({"stage": "fit_covariance", "done": 3, "total": 40,
                                                    "started": 0, "updated": 0, "pid": 999999,
                                                    "error": "OutOfMemoryError: CUDA out of memory"}))  # fmt: skip
    app.session_state["run_path"] = str(failed)
    at = _page(app, "run")
    assert any("The run stopped: OutOfMemoryError: CUDA out of memory" in e.value for e in at.error)
    import shutil

    shutil.rmtree(failed)


def test_bad_input_file_is_reported_and_nothing_starts(app, runs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src_text": "a", "trg_text": "", "trg_lang": "de"}\n')
    app.session_state["run_path"] = None
    at = _page(app, "run")
    at.text_input(key="cands_path").set_value(str(bad))
    at.text_input(key="seeds_path").set_value(str(bad))
    inputs = [t for t in at.text_input if t.label == "Model"]
    inputs[0].set_value("some/model")
    run_name = [t for t in at.text_input if t.label == "Run name"][0]
    run_name.set_value("never")
    at.button[-1].click().run()
    assert any("bad.jsonl:1: field 'trg_text': empty target" in e.value for e in at.error)
    assert not (runs / "never").exists()
    assert os.environ["GDIG_RUNS_DIR"] == str(runs)


def test_first_screen_offers_the_demo_and_shows_its_progress(monkeypatch, tmp_path):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(tmp_path))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.button(key="build_demo").label == "Build the demo"
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "status.json").write_text(json.dumps({"stage": "finetune", "done": 40, "total": 564, "started": 0,
                                                  "updated": 1, "pid": os.getpid(), "error": None}))  # fmt: skip
    at.run()
    assert not at.exception
    assert "Building the demo · finetune: 40/564" in at.get("progress")[0].proto.text


def test_demo_report_is_shown(app, runs):
    (runs / "demo" / "demo_report.json").write_text(json.dumps(
        {"chrf": 61.5, "auroc": {"fraction_helped": 0.71, "mean_influence": 0.82, "low_loss": 0.8}}))  # fmt: skip
    at = _page(app, "home")
    assert _metric(at, "Held-out chrF of the demo model") == "61.5"
    assert _metric(at, "AUROC, mean influence") == "0.820"
    assert _metric(at, "AUROC, low loss (baseline)") == "0.800"
    assert next(m.delta for m in at.metric if m.label == "AUROC, mean influence") == "+0.020 vs low loss"
    assert not at.expander  # an older report without per-kind figures: no table, no error
    (runs / "demo" / "demo_report.json").write_text(json.dumps(
        {"chrf": 61.5, "bleu": 20.0, "auroc": {"fraction_helped": 0.71, "mean_influence": 0.82, "low_loss": 0.8},
         "auroc_mean_influence_per_kind": {"misaligned": 0.7, "truncated": 0.9}}))  # fmt: skip
    at = _page(app, "home")
    table = at.expander[0].dataframe[0].value
    assert table["corruption"].tolist() == ["misaligned", "truncated"] and table["AUROC"].tolist() == [0.7, 0.9]
    (runs / "demo" / "demo_report.json").unlink()
