"""Runs: every run under the runs folder, newest first, with its state; pick one to inspect."""

import datetime as dt
import json

import pandas as pd
import streamlit as st

from app_pages.common import RUN_KEY, guard, runs_dir
from gdig.jobs import job_state, list_runs, start_demo_job

st.header("Runs")


@st.fragment(run_every=1.0)
def demo_progress(run_dir: str) -> None:
    state = job_state(run_dir)
    if state.finished:
        st.success("The demo is ready.")
        if st.button("Open the demo", type="primary", key="open_demo"):
            st.session_state[RUN_KEY] = run_dir
            st.switch_page("app_pages/influence.py")
        return
    if state.error:
        st.error(f"Building the demo stopped: {state.error}")
        if st.button("Try again", key="retry_demo"):
            start_demo_job(run_dir)
            st.rerun()
        return
    st.progress(state.fraction, text=f"Building the demo · {state.stage}: {state.done}/{state.total}")


with guard():
    runs = list_runs(runs_dir())
    demo_dir = runs_dir() / "demo"
    building = demo_dir.is_dir() and not job_state(demo_dir).finished
    if not runs or building:
        st.markdown(
            "**New here? Try the built-in demo.** It makes an English-to-German corpus offline from CLDR data, with "
            "20% of the pool deliberately corrupted (misaligned, untranslated, wrong language, truncated, repeated "
            "words), trains a small Llama on it, and scores the pool against a clean seed set. About 2 minutes on "
            "2 CPU cores; built once and cached."
        )
        if demo_dir.is_dir():
            demo_progress(str(demo_dir))
        elif st.button("Build the demo", type="primary", key="build_demo"):
            start_demo_job(demo_dir)
            st.rerun()
        st.caption("Or start your own on the **New run** page.")
    if runs:
        rows = [{"run": r["name"], "state": r["state"], "stage": r["job"].stage,
                 "progress": f"{r['job'].done}/{r['job'].total}",
                 "modified": dt.datetime.fromtimestamp(r["mtime"]).strftime("%Y-%m-%d %H:%M"),
                 "error": r["job"].error or ""} for r in runs]  # fmt: skip
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        names = [r["name"] for r in runs]
        chosen = st.selectbox("Open run", names, key="home_open")
        if st.button("Open", type="primary"):
            st.session_state[RUN_KEY] = str(runs_dir() / chosen)
            st.switch_page("app_pages/influence.py")
        report = demo_dir / "demo_report.json"
        if report.exists():
            rep = json.loads(report.read_text())
            st.subheader("The demo, measured")
            auroc = rep["auroc"]
            a, b, c, d = st.columns(4)
            bleu = f"; BLEU {rep['bleu']:.1f}" if "bleu" in rep else ""
            a.metric("Held-out chrF of the demo model", f"{rep['chrf']:.1f}", help=f"greedy decoding, sacrebleu{bleu}")
            b.metric("AUROC, mean influence", f"{auroc['mean_influence']:.3f}",
                     delta=f"{auroc['mean_influence'] - auroc['low_loss']:+.3f} vs low loss",
                     help="How well the G-DIG score tells corrupted from clean pool pairs (1 = perfect)")  # fmt: skip
            c.metric("AUROC, fraction of seeds helped", f"{auroc['fraction_helped']:.3f}",
                     help="The paper's rule counts the seeds a pair helps")  # fmt: skip
            d.metric("AUROC, low loss (baseline)", f"{auroc['low_loss']:.3f}",
                     help="Ranking pairs by the fine-tuned model's own loss, the usual heuristic")  # fmt: skip
            per_kind = rep.get("auroc_mean_influence_per_kind")
            if per_kind:
                with st.expander("AUROC of the mean influence, by kind of corruption"):
                    kinds = pd.DataFrame({"corruption": [k.replace("_", " ") for k in per_kind],
                                          "AUROC": list(per_kind.values())})  # fmt: skip
                    bar = st.column_config.ProgressColumn("AUROC", min_value=0.0, max_value=1.0, format="%.3f")
                    st.dataframe(kinds, hide_index=True, column_config={"AUROC": bar})
