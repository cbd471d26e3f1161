"""The Streamlit app driven by AppTest on a small finished run: every page, the controls, and failure messages."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_pairs, write_jsonl
from gdig.config import ScoreConfig
from gdig.pipeline.run import score
from gdig.rundir.layout import CURATION
from gdig.rundir.results import load_run
from gdig.selection.signal_table import what_signals_catch
from gdig.selection.signals import weakest_rank

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    cands = write_jsonl(data / "c.jsonl", make_pairs(40, seed=11))
    seeds = write_jsonl(data / "s.jsonl", make_pairs(6, seed=12))
    cfg = ScoreConfig(
        model=str(llama_dir),
        candidates=str(cands),
        seeds=str(seeds),
        out=str(root / "demo"),
        sketch_dim=64,
        hessian="kfac",
    )
    score(cfg)
    return root


@pytest.fixture()
def app(runs, monkeypatch):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(runs))
    monkeypatch.chdir(ROOT)
    (runs / "demo" / CURATION).unlink(missing_ok=True)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run_name"] = "demo"
    yield at
    (runs / "demo" / CURATION).unlink(missing_ok=True)


def _rule(runs: Path, **settings) -> None:
    """The curator's saved rule for the demo run (what the Influence page writes)."""
    (runs / "demo" / CURATION).write_text(json.dumps(settings))


def _page(at: AppTest, page: str) -> AppTest:
    at.run()
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_runs_page_lists_the_run_with_its_settings_and_size(app):
    at = _page(app, "home")
    table = at.dataframe[0].value
    assert table["run"].tolist() == ["demo"] and table["state"].tolist() == ["finished"]
    assert table["settings"].iloc[0].startswith("40 x 6 · kfac · unit · λ=0.1×mean")
    assert table["size"].iloc[0].endswith(" MB")


def test_the_default_rule_keeps_the_candidates_that_help_on_average(app, runs):
    at = _page(app, "influence")
    run = load_run(runs / "demo")
    kept = (run.mean_influence >= 0) & (weakest_rank(list(run.signals.values())) >= 0.1)  # no signal's worst tenth
    assert int(_metric(at, "Kept").replace(",", "")) == int(kept.sum()) > 0
    assert at.radio(key="w_rule").value == "mean"
    lines = [json.loads(c.proto.spec)["layout"].get("shapes", []) for c in at.get("plotly_chart")[:2]]
    assert lines[0] == [] and [s["x0"] for s in lines[1]] == [0.0]  # a threshold on the statistic in force only


def test_influence_rule_changes_the_counts_and_is_kept_across_reloads(app, runs):
    at = _page(app, "influence")
    at.radio(key="w_combine").set_value("influence").run()  # G-DIG's rule alone: tau 0 keeps every candidate
    at.radio(key="w_rule").set_value("fraction").run()
    strict = int(_metric(at, "Kept").replace(",", ""))
    at.slider(key="w_tau").set_value(0.0).run()
    assert not at.exception
    assert int(_metric(at, "Kept").replace(",", "")) == 40 >= strict
    saved = json.loads((runs / "demo" / CURATION).read_text())
    assert saved["rule"] == "fraction" and saved["tau"] == 0.0
    reloaded = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)  # a reload: a new session
    reloaded.query_params["run"] = "demo"
    reloaded = _page(reloaded, "influence")
    assert reloaded.slider(key="w_tau").value == 0.0 and _metric(reloaded, "Kept") == "40"
    reloaded.radio(key="w_rule").set_value("mean").run()
    reloaded.number_input(key="w_min_mean").set_value(1e9).run()
    assert _metric(reloaded, "Kept") == "0"


def test_the_signals_panel_filters_and_combines_and_is_saved(app, runs):
    at = _page(app, "influence")
    labels = [e.label for e in at.expander]
    assert "Signals beside influence: length ratio, language identification, loss" in labels  # the run's own
    assert any(c.value == what_signals_catch() for c in at.caption)  # and what each catches
    base = int(_metric(at, "Kept").replace(",", ""))
    at.number_input(key="w_max_length_deviation").set_value(0.05).run()
    assert not at.exception
    tight = int(_metric(at, "Kept").replace(",", ""))
    assert tight < base  # some demo pairs are far off the typical length ratio
    at.number_input(key="w_max_length_deviation").set_value(0.0).run()  # 0: off
    assert int(_metric(at, "Kept").replace(",", "")) == base
    at.radio(key="w_combine").set_value("weakest").run()
    at.slider(key="w_min_weakest").set_value(0.3).run()  # drop each signal's bottom 30%: fewer kept
    assert not at.exception and int(_metric(at, "Kept").replace(",", "")) < base
    at.radio(key="w_combine").set_value("rank-average").run()
    at.slider(key="w_min_combined").set_value(0.9).run()
    assert not at.exception and int(_metric(at, "Kept").replace(",", "")) <= 0.15 * 40
    saved = json.loads((runs / "demo" / CURATION).read_text())
    assert saved["combine"] == "rank-average" and saved["min_combined"] == 0.9 and not saved["max_length_deviation"]


def test_clusters_k_reclusters_and_the_map_has_a_legend(app, runs):
    _rule(runs, rule="fraction", tau=0.0, combine="influence")
    at = _page(app, "clusters")
    first = len(at.dataframe[0].value)
    at.slider(key="w_clusters").set_value(3).run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 3 != first
    assert at.dataframe[1].value["cluster"].nunique() == 3
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["layout"]["showlegend"] and {t["name"] for t in fig["data"]} == {"cluster 0", "cluster 1", "cluster 2"}


def test_rejected_rows_are_named_not_clustered(app, runs):
    _rule(runs, rule="mean", min_mean=float(np.median(load_run(runs / "demo").mean_influence)))
    at = _page(app, "clusters")
    table = at.dataframe[1].value
    rejected = table[table["decision"] == "rejected"]
    assert len(rejected) and set(rejected["cluster"]) == {"not clustered (rejected)"}
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "not clustered (rejected)" in {t["name"] for t in fig["data"]}


def test_explore_shows_every_candidate_even_when_the_rule_keeps_none(app, runs):
    _rule(runs, rule="mean", min_mean=1e9)
    at = _page(app, "explore")
    assert at.caption[0].value.startswith("40 of 40 candidates")
    assert set(at.dataframe[0].value["decision"]) == {"rejected"}
    assert _metric(at, "Decision") == "rejected"
    assert 1 <= int(_metric(at, "Rank of 40")) <= 40  # the total in the label: the value fits a fifth of the row


def test_explore_include_exclude_persist(app, runs):
    _rule(runs, rule="fraction", tau=1.0)
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


def test_explore_token_heatmap_renders_escaped_text(app, runs):
    _rule(runs, rule="fraction", tau=0.0)
    at = _page(app, "explore")
    at.button(key="ex_tokens").click().run()
    assert not at.exception
    assert "Contributions sum to" in at.caption[-1].value
    body = at.get("html")[0].proto.body
    # the tokenizer's "<s>" is shown as text, never passed on as a tag; one span per token, each with its value
    assert "&lt;s&gt;" in body and "<s>" not in body
    assert body.count("<span title=") > 5 and "<script" not in body


def test_export_writes_the_expected_jsonl(app, runs):
    _rule(runs, rule="fraction", tau=0.0)
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


@pytest.mark.parametrize("outside", ["/etc", "..", "../demo", "nope"])
def test_run_parameter_is_confined_to_the_runs_folder(runs, monkeypatch, outside):
    """?run= names a run in the runs folder; anything else is an error and no page reads or writes there."""
    monkeypatch.setenv("GDIG_RUNS_DIR", str(runs))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["run"] = outside
    at = _page(at, "explore")
    assert any(f"No run named '{outside}'" in e.value for e in at.sidebar.error)
    assert any("Choose a run" in i.value for i in at.info)
    assert at.session_state["run_name"] is None


def test_missing_run_file_is_a_clear_message(app, runs):
    broken = runs / "broken"
    shutil.copytree(runs / "demo", broken)
    (broken / "sketch.npy").unlink()
    app.session_state["run_name"] = "broken"
    at = _page(app, "influence")
    assert any("missing sketch.npy" in w.value for w in at.warning)
    shutil.rmtree(broken)


def test_failed_worker_is_shown_in_plain_words(app, runs):
    failed = runs / "failed"
    failed.mkdir()
    (failed / "status.json").write_text(
        json.dumps(
            {
                "stage": "fit_covariance",
                "done": 3,
                "total": 40,
                "started": 0,
                "updated": 0,
                "pid": 999999,
                "error": "OutOfMemoryError: CUDA out of memory",
            }
        )
    )
    app.session_state["run_name"] = "failed"
    at = _page(app, "run")
    assert any("The run stopped: OutOfMemoryError: CUDA out of memory" in e.value for e in at.error)
    shutil.rmtree(failed)


def _fill_new_run(at: AppTest, name: str, model: str, cands: str, seeds: str) -> AppTest:
    at.text_input(key="new_name").set_value(name)
    at.text_input(key="new_model").set_value(model)
    at.text_input(key="cands_path").set_value(cands)
    at.text_input(key="seeds_path").set_value(seeds)
    return at


def test_bad_input_file_is_reported_and_nothing_starts(app, runs, tmp_path, llama_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src_text": "a", "trg_text": "", "trg_lang": "de"}\n')
    app.session_state["run_name"] = None
    at = _page(app, "run")
    _fill_new_run(at, "never", str(llama_dir), str(bad), str(bad)).button(key="start").click().run()
    assert any("bad.jsonl:1: field 'trg_text': empty target" in e.value for e in at.error)
    assert not (runs / "never").exists() and not (runs / ".inputs" / "never").exists()
    assert os.environ["GDIG_RUNS_DIR"] == str(runs)


@pytest.mark.parametrize(
    ("name", "model", "message"),
    [
        ("ok-name", "no/such-model", "was not found. Looked for (1) a local folder with config.json"),
        ("...", None, "run name '...': use 1-100 letters"),
        ("../escape", None, "run name '../escape'"),
    ],
)
def test_new_run_checks_the_name_and_the_model_before_starting(app, runs, name, model, message, llama_dir):
    app.session_state["run_name"] = None
    at = _page(app, "run")
    good = str(runs / "demo" / "candidates.parquet")
    _fill_new_run(at, name, model or str(llama_dir), good, good).button(key="start").click().run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert sorted(p.name for p in runs.iterdir()) == ["demo"]


def test_new_run_keeps_its_name_then_switches_to_the_started_run(app, runs, tmp_path, llama_dir):
    from gdig.studio.jobs import cancel_job, delete_run

    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(30, seed=3))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(4, seed=4))
    app.session_state["run_name"] = None
    at = _page(app, "run")
    default = at.text_input(key="new_name").value
    assert default.startswith("run-")
    _fill_new_run(at, "my-named-run", str(llama_dir), str(cands), str(seeds)).run()
    at.radio(key="cands_src").set_value("path on this machine").run()  # other reruns keep the typed name
    assert at.text_input(key="new_name").value == "my-named-run"
    at.button(key="start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    try:
        assert at.session_state["run_name"] == "my-named-run" and at.query_params["run"] in (
            "my-named-run",
            ["my-named-run"],
        )
        assert at.sidebar.selectbox(key="run_pick").value == "my-named-run"
        assert any(s.value == "Run `my-named-run`" for s in at.subheader)  # its progress, not the form
        assert at.expander[0].label == "Start another run"
        assert at.text_input(key="new_name").value != "my-named-run"  # a second click cannot reuse the name
        keys = [b.key for b in at.button]  # nor start another job: a double-click's second click goes to "start"
        assert "start" not in keys and "start_another" in keys
        assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == ["demo", "my-named-run"]
    finally:
        cancel_job(runs / "my-named-run", grace_seconds=30)
        delete_run(runs, "my-named-run")


def test_uploaded_inputs_of_a_refused_run_are_removed(runs, tmp_path, llama_dir):
    from gdig.studio.jobs import start_new_run

    bad = b'{"src_text": "a", "trg_text": "", "trg_lang": "de"}\n'
    with pytest.raises(ValueError, match="upload.jsonl:1: field 'trg_text': empty target"):
        start_new_run(runs, "refused", str(llama_dir), [("upload.jsonl", bad), ("s.jsonl", bad)], {})
    assert not (runs / ".inputs" / "refused").exists() and not (runs / "refused").exists()


def test_delete_a_run_from_the_runs_page(app, runs):
    shutil.copytree(runs / "demo", runs / "old-try")
    at = _page(app, "home")
    at.selectbox(key="home_open").set_value("old-try").run()
    at.button(key="home_delete").click().run()
    assert not at.exception and not (runs / "old-try").exists() and (runs / "demo").exists()
    assert at.dataframe[0].value["run"].tolist() == ["demo"]


def test_first_screen_offers_the_demo_and_shows_its_overall_progress(monkeypatch, tmp_path):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(tmp_path))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.button(key="build_demo").label == "Build the demo"
    demo = tmp_path / "demo"
    demo.mkdir()
    plan = {"corpus": 1.0, "finetune": 3.0, "score": 6.0}
    (demo / "status.json").write_text(
        json.dumps(
            {
                "stage": "finetune",
                "done": 47,
                "total": 94,
                "started": 100,
                "updated": 130,
                "pid": os.getpid(),
                "error": None,
                "plan": plan,
                "job_fraction": 0.25,
                "job_fraction_at_start": 0.0,
            }
        )
    )
    at.run()
    assert not at.exception
    text = at.get("progress")[0].proto.text
    assert text.startswith("Building the demo: 25% · about 1 min 30 s left · finetune 47/94"), text


def test_first_screen_offers_the_pretrained_demo_or_says_how_to_install_it(monkeypatch, tmp_path):
    from gdig.inputs import model_source
    from gdig.studio import jobs

    monkeypatch.setenv("GDIG_RUNS_DIR", str(tmp_path))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(model_source, "smollm2_gguf", lambda: None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception and not [b for b in at.button if b.key == "build_pretrained"]
    assert any(model_source.SMOLLM2_INSTALL in i.value for i in at.info)
    started = []
    monkeypatch.setattr(model_source, "smollm2_gguf", lambda: Path("/models/smollm2.gguf"))
    monkeypatch.setattr(jobs, "start_demo_job", lambda folder, base=None: started.append((Path(folder), base)))
    at.run()
    assert not any(model_source.SMOLLM2_INSTALL in i.value for i in at.info)
    at.button(key="build_pretrained").click().run()
    assert not at.exception
    assert started == [(tmp_path / "demo-pretrained", "/models/smollm2.gguf")]


def test_demo_report_is_shown(app, runs):
    (runs / "demo" / "demo_report.json").write_text(
        json.dumps({"chrf": 61.5, "auroc": {"fraction_helped": 0.71, "mean_influence": 0.82, "low_loss": 0.8}})
    )
    at = _page(app, "home")
    assert _metric(at, "Held-out chrF of the demo model") == "61.5"
    assert _metric(at, "AUROC, mean influence") == "0.820"
    assert _metric(at, "AUROC, low loss (baseline)") == "0.800"
    assert next(m.delta for m in at.metric if m.label == "AUROC, mean influence") == "+0.020 vs low loss"
    assert not at.expander  # an older report without per-kind figures: no table, no error
    (runs / "demo" / "demo_report.json").write_text(
        json.dumps(
            {
                "chrf": 61.5,
                "bleu": 20.0,
                "auroc": {"fraction_helped": 0.71, "mean_influence": 0.82, "low_loss": 0.8},
                "auroc_mean_influence_per_kind": {"misaligned": 0.7, "truncated": 0.9},
            }
        )
    )
    at = _page(app, "home")
    table = at.expander[0].dataframe[0].value
    assert table["corruption"].tolist() == ["misaligned", "truncated"] and table["AUROC"].tolist() == [0.7, 0.9]
    auroc = {"fraction_helped": 0.7, "mean_influence": 0.77, "low_loss": 0.6, "length_ratio": 0.8, "with_signals": 0.87}
    (runs / "demo-pretrained").mkdir()
    (runs / "demo-pretrained" / "demo_report.json").write_text(json.dumps({"chrf": 30.0, "auroc": auroc}))
    at = _page(app, "home")
    assert [s.value for s in at.subheader] == ["The demo, measured", "The pretrained demo, measured"]
    assert _metric(at, "AUROC, G-DIG + signals") == "0.870"  # shown only where the report has it
    assert [m.value for m in at.metric if m.label == "AUROC, length ratio (baseline)"] == ["0.800"]
    (runs / "demo" / "demo_report.json").unlink()
    shutil.rmtree(runs / "demo-pretrained")


def test_no_auto_discovered_pages_folder_and_no_file_watcher():
    """Streamlit lists a `pages/` folder beside the entry script before st.navigation runs (the raw module
    names flash in the sidebar), and its file watcher re-scans the whole tree (.venv included) while a tab is
    open: the app has neither."""
    import tomllib

    assert not (ROOT / "pages").exists()
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none" and server["runOnSave"] is False
    assert server["address"] == "localhost"


def test_new_run_plans_memory_and_time_before_starting(app, runs, tmp_path, llama_dir):
    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(30, seed=3))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(4, seed=4))
    app.session_state["run_name"] = None
    at = _page(app, "run")
    _fill_new_run(at, "planned", str(llama_dir), str(cands), str(seeds)).button(key="plan").click().run()
    assert not at.error, [e.value for e in at.error]
    text = at.code[0].value
    assert "fit_covariance" in text and "seeds kept dense" in text and ": fits" in text and "about" in text
    assert not (runs / "planned").exists() and not (runs / ".inputs" / "planned").exists()  # nothing kept


def test_seeds_page_drops_and_adds_seeds_and_every_page_follows(app, runs):
    at = _page(app, "seeds")
    table = at.dataframe[0].value
    assert len(table) == 6 and {"flags", "loss", "helped by", "agreement", "scored"} <= set(table.columns)
    first = table["id"].iloc[0]
    at.multiselect(key="seed_drop_demo").select(first).run()
    at.text_area(key="seed_src").input("the big dog runs")  # a form: sent together with its button
    at.text_area(key="seed_trg").input("der große Hund läuft")
    at.button(key="seed_add").click().run()
    at.text_input(key="seed_set_name").input("demo-seeds-b").run()
    at.button(key="seed_score").click().run()
    assert not at.exception, at.exception
    assert at.session_state["run_name"] == "demo-seeds-b"
    new = load_run(runs / "demo-seeds-b")
    parent = load_run(runs / "demo")
    assert new.seeds["id"].tolist() == [*table["id"].iloc[1:], "added-1"]
    assert np.array_equal(np.asarray(new.influence)[:, :5], np.asarray(parent.influence)[:, 1:])
    assert new.seeds["scored_from"].tolist()[-1] == "index"
    at.run()
    assert any("scored from the index" in i.value for i in at.info)
    assert any("scored from the gradient index of demo" in c.value for c in at.sidebar.caption)  # on every page
    at.switch_page("app_pages/influence.py").run()  # the Influence page follows the new seed set
    assert not at.exception, at.exception
    kept = (new.mean_influence >= 0) & (weakest_rank(list(new.signals.values())) >= 0.1)
    assert int(_metric(at, "Kept").replace(",", "")) == int(kept.sum())
    shutil.rmtree(runs / "demo-seeds-b")


def test_ask_the_pool_lists_helping_and_hurting_pairs(app, runs):
    at = _page(app, "ask")
    at.text_area(key="ask_src").input("the cat sees the dog")  # a form: sent together with its button
    at.text_area(key="ask_trg").input("die Katze sieht den Hund")
    at.number_input(key="ask_top").set_value(4)
    at.button(key="ask_go").click().run()
    assert not at.exception, at.exception
    helps, hurts = at.dataframe[0].value, at.dataframe[1].value
    assert len(helps) == len(hurts) == 4
    assert helps["score"].is_monotonic_decreasing and hurts["score"].is_monotonic_increasing
    assert helps["score"].iloc[-1] >= hurts["score"].iloc[-1] and "cluster" in helps.columns


def test_index_pages_say_how_to_index_a_run_without_one(app, runs):
    from gdig.rundir.index import INDEX_FILES

    shutil.copytree(runs / "demo", runs / "old", ignore=shutil.ignore_patterns(*INDEX_FILES))
    try:
        app.session_state["run_name"] = "old"
        at = _page(app, "ask")
        assert any("gdig index" in w.value for w in at.warning)
    finally:
        shutil.rmtree(runs / "old")


def test_seeds_page_refuses_a_pair_longer_than_the_runs_max_length(app, runs):
    at = _page(app, "seeds")
    at.text_area(key="seed_src").input("the cat " * 400)
    at.text_area(key="seed_trg").input("die Katze")
    at.button(key="seed_add").click().run()
    at.text_input(key="seed_set_name").input("too-long").run()
    at.button(key="seed_score").click().run()
    assert not at.exception, at.exception
    assert any("longer than the run's max length" in e.value for e in at.error)
    assert not (runs / "too-long").exists() and at.session_state["run_name"] == "demo"


def test_including_a_row_of_a_filtered_list_keeps_it_in_view_says_so_and_undoes(app, runs):
    """Item 5 of the second-hour walk: the decided candidate used to vanish and the panel jump to another one."""
    _rule(runs, rule="fraction", tau=1.0)
    at = _page(app, "explore")
    at.selectbox(key="ex_show").set_value("rejected").run()
    target = at.selectbox(key="ex_id").options[1]
    at.selectbox(key="ex_id").set_value(target).run()
    at.button(key="ov_include").click().run()
    assert not at.exception
    assert target not in at.dataframe[0].value["id"].tolist()  # it left the filter...
    assert at.selectbox(key="ex_id").value == target  # ...but the panel stays on it
    assert any(f"{target} is now included by hand; it no longer matches" in i.value for i in at.info)
    at.button(key="ov_undo").click().run()
    assert json.loads((runs / "demo" / "overrides.json").read_text())["include"] == []
    assert target in at.dataframe[0].value["id"].tolist()


def _clear_decisions(runs: Path) -> None:
    for name in ("overrides.json", "last_bulk.json"):
        (runs / "demo" / name).unlink(missing_ok=True)


def test_explore_bulk_decision_on_a_search_counts_first_applies_and_undoes(app, runs):
    _clear_decisions(runs)
    _rule(runs, rule="fraction", tau=0.0)
    run = load_run(runs / "demo")
    at = _page(app, "explore")
    word = run.candidates["target"].iloc[0].split()[0]
    at.text_input(key="ex_query").set_value(word).run()
    listed = at.dataframe[0].value["id"].tolist()
    assert 1 < len(listed) < run.n
    at.selectbox(key="ex_id").set_value(listed[0]).run()
    at.button(key="ov_exclude").click().run()  # one already excluded by hand: the bulk count leaves it out
    assert at.selectbox(key="ex_bulk_choice").label == f"For all {len(listed)} listed"
    assert any(c.value.startswith(f"{len(listed) - 1} of them would change; 1 are excluded") for c in at.caption)
    at.button(key="ex_bulk_apply").click().run()
    assert not at.exception
    saved = json.loads((runs / "demo" / "overrides.json").read_text())
    assert sorted(saved["exclude"]) == sorted(listed) and saved["include"] == []
    assert any(f"excluded {len(listed) - 1} candidates" in i.value for i in at.info)
    assert at.button(key="ex_bulk_apply").disabled  # nothing left to change
    at.button(key="ex_bulk_undo").click().run()
    assert json.loads((runs / "demo" / "overrides.json").read_text())["exclude"] == [listed[0]]
    assert not (runs / "demo" / "last_bulk.json").exists()
    _clear_decisions(runs)


def test_clusters_bulk_decision_on_the_box_selection(app, runs):
    _clear_decisions(runs)
    _rule(runs, rule="fraction", tau=0.0)
    run = load_run(runs / "demo")
    app.session_state["lasso_rows"] = [3, 5, 8]
    app.session_state["_lasso_run"] = str(runs / "demo")
    at = _page(app, "clusters")
    at.selectbox(key="map_bulk_choice").set_value("Include").run()
    assert at.button(key="map_bulk_apply").label == "Include 3 candidates"
    at.button(key="map_bulk_apply").click().run()
    assert not at.exception
    assert sorted(json.loads((runs / "demo" / "overrides.json").read_text())["include"]) == sorted(
        run.ids[i] for i in (3, 5, 8)
    )
    assert set(at.dataframe[1].value["decision"]) == {"included by hand"}
    at.button(key="map_bulk_undo").click().run()
    assert json.loads((runs / "demo" / "overrides.json").read_text())["include"] == []
    _clear_decisions(runs)


def test_keep_one_per_duplicate_group_counts_them_and_explore_lists_the_group(runs, monkeypatch):
    import pandas as pd

    dups = runs / "dups"
    shutil.copytree(runs / "demo", dups)
    try:
        cands = pd.read_parquet(dups / "candidates.parquet")
        for row, change in ((1, str.upper), (2, lambda t: "  " + t + " ")):  # exact duplicates of row 0
            cands.loc[row, "src_text"] = change(cands.loc[0, "src_text"])
            cands.loc[row, "trg_text"] = change(cands.loc[0, "trg_text"])
        cands.to_parquet(dups / "candidates.parquet")
        (dups / CURATION).write_text(json.dumps({"rule": "fraction", "tau": 0.0, "combine": "influence"}))
        monkeypatch.setenv("GDIG_RUNS_DIR", str(runs))
        monkeypatch.chdir(ROOT)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.session_state["run_name"] = "dups"
        at = _page(at, "influence")
        assert _metric(at, "Kept") == "40"
        at.radio(key="w_dedupe").set_value("exact").run()
        assert not at.exception
        assert any("3 pairs have an exact duplicate (2 beyond one per group)" in c.value for c in at.caption)
        assert _metric(at, "Kept") == "38"
        assert any("Rejected as duplicates of a better pair (exact): 2" in c.value for c in at.caption)
        assert json.loads((dups / CURATION).read_text())["dedupe"] == "exact"
        at.switch_page("app_pages/explore.py").run()
        at.selectbox(key="ex_show").set_value("with a duplicate").run()
        table = at.dataframe[0].value
        assert sorted(table["id"]) == sorted(cands["id"].iloc[:3]) and table["duplicate group"].nunique() == 1
        assert table["exact"].all() and sorted(table["decision"]) == ["rejected", "rejected", "selected"]
    finally:
        shutil.rmtree(dups)


def test_a_negative_budget_gets_a_specific_message_not_streamlits_box(app, runs):
    """Item 9 of the second-hour walk: -5 typed into Export's budget."""
    at = _page(app, "export")
    at.number_input(key="w_budget").set_value(-5).run()
    assert not at.exception
    assert any("budget must be >= 0 (0 or none: every kept candidate), got -5" in e.value for e in at.error)
    at.number_input(key="w_budget").set_value(5).run()
    assert not at.exception and not at.error and _metric(at, "Selected") == "5"


def test_colouring_by_score_shows_the_colour_bar_alone(app, runs):
    """Item 9: the colour bar's title overlapped the legend when colouring by a score."""
    _rule(runs, rule="fraction", tau=0.0, combine="influence")
    at = _page(app, "clusters")
    at.selectbox(key="w_color_by").set_value("mean influence").run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["data"][0]["marker"]["colorbar"]["title"]["text"] == "mean influence"
    assert fig["layout"]["showlegend"] is False
    at.selectbox(key="w_color_by").set_value("decision").run()
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["showlegend"] is True


def test_each_page_applies_the_rule_once_per_setting(app, runs, monkeypatch):
    import traceback

    import gdig.studio.views as views

    calls = []  # where each application of the rule came from
    real = views.rule_decisions
    monkeypatch.setattr(
        views, "rule_decisions", lambda *a, **k: calls.append(traceback.format_stack(limit=8)) or real(*a, **k)
    )
    _rule(runs, min_mean=-123.0)  # a rule no earlier test used: nothing cached for it
    at = _page(app, "export")
    assert len(calls) == 1, calls  # the K check, the selection and the counts share one application of the rule
    at.number_input(key="w_budget").set_value(5).run()
    at.number_input(key="w_seed").set_value(3).run()
    assert not at.exception and len(calls) == 1  # the budget and the seed only cluster and resample
    at.switch_page("app_pages/clusters.py").run()
    at.switch_page("app_pages/explore.py").run()
    assert not at.exception and len(calls) == 1
    at.switch_page("app_pages/influence.py").run()
    at.number_input(key="w_min_mean").set_value(-124.0).run()
    assert not at.exception and len(calls) == 2  # a new rule is applied once
