"""Train and compare, the Compare page's lower half: `gdig evaluate` on the compared selections as a background job
(progress, ETA, cancel, resume), and each evaluation's report: mean ± sd over seeds, the paired differences, a
chart, the files to download."""

import datetime as dt
import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages.common import live, progress_label
from gdig.options import specs
from gdig.pipeline.evaluation import EvaluationConfig
from gdig.pipeline.evaluation_report import METRICS, markdown
from gdig.studio.evaluations import (
    default_data,
    default_model,
    default_test,
    evaluation_config,
    list_evaluations,
    resume_evaluation,
    start_evaluation,
)
from gdig.studio.jobs import cancel_job, job_state

HELP = specs(EvaluationConfig)


def training_panel(run, sels) -> None:
    """The form that starts an evaluation of `sels`, then every evaluation of the run, newest first."""
    st.subheader("Train and compare")
    st.caption(
        "The same LoRA fine-tune of a base model on each selection above, for several training seeds (the spread "
        "between seeds is the noise), then chrF and BLEU of greedy translations of a held-out test set and the "
        "teacher-forced loss of its references. It runs in the background: you can leave the page."
    )
    _form(run, sels)
    for i, entry in enumerate(list_evaluations(run.path)):
        with st.expander(f"{entry.name}: {_state_word(entry)}", expanded=i == 0):
            if entry.report is not None and not entry.state.running:  # a resume that adds seeds runs again
                _report(entry.name, entry.report)
            else:
                live(_progress, f"eval-{run.path.name}-{entry.name}", entry.state.running, str(entry.path))


def _form(run, sels) -> None:
    model, gguf = default_model(run)
    st.session_state.setdefault("cmp_eval_name", f"eval-{dt.datetime.now():%Y%m%d-%H%M%S}")
    with st.form("cmp_train"):
        a, b, c = st.columns([2, 3, 1])
        name = a.text_input("Evaluation name", key="cmp_eval_name")
        base = b.text_input("Base model", value=model, help=HELP["model"].help, key="cmp_eval_model")
        seeds = c.number_input("Training seeds", 1, 20, value=3, help=HELP["seeds"].help, key="cmp_eval_seeds")
        test = st.text_input(
            "Test file (with references)", value=default_test(run), help=HELP["test"].help, key="cmp_eval_test"
        )
        d, e, f, g = st.columns(4)
        epochs = d.number_input("Epochs", 0.1, 20.0, value=1.0, step=0.5, key="cmp_eval_epochs")
        lr = e.number_input("Learning rate", 1e-6, 1.0, value=HELP["lr"].default, format="%.0e", key="cmp_eval_lr")
        tokens = f.number_input("Longest translation (tokens)", 1, 1024, value=64, key="cmp_eval_tokens")
        unequal = g.checkbox("Allow unequal sizes", help=HELP["allow_unequal"].help, key="cmp_eval_unequal")
        started = st.form_submit_button(f"Train and compare {len(sels)} selections", type="primary")
    if not started:
        return
    try:
        cfg = evaluation_config(
            base.strip(),
            test.strip(),
            gguf if base.strip() == model else None,
            default_data(run),
            seeds=int(seeds),
            epochs=float(epochs),
            lr=float(lr),
            max_new_tokens=int(tokens),
            allow_unequal=unequal,
        )
        start_evaluation(run, sels, name, cfg)
    except (ValueError, FileNotFoundError) as err:
        st.error(f"Not started: {err}")
        return
    del st.session_state["cmp_eval_name"]  # the next evaluation gets a fresh default name
    st.rerun()


def _state_word(entry) -> str:
    if entry.state.running:
        return "running"
    if entry.report is not None:
        return "finished"
    return "stopped" if entry.state.error else entry.state.stage


def _progress(folder: str) -> bool:
    state = job_state(folder)
    if state.error:
        st.warning(f"Stopped: {state.error}")
        st.caption("Resume keeps every finished fine-tune and trains the rest.")
        if st.button("Resume", key=f"resume_{folder}"):
            try:
                resume_evaluation(folder)
            except (ValueError, OSError) as err:  # started from another tab meanwhile, or its job file is gone
                st.error(f"Not resumed: {err}")
                return False
            st.rerun(scope="app")
        return False
    st.progress(state.job_fraction, text=f"Overall {state.job_fraction:.0%} · " + progress_label(state))
    if state.running and st.button("Cancel", key=f"cancel_{folder}"):
        cancel_job(folder, grace_seconds=5)
        st.rerun(scope="app")
    return state.running


def _report(name: str, report: dict) -> None:
    rows = []
    for sel in report["names"]:
        s = report["per_selection"][sel]
        cells = {label: _cell(s[m]) for m, (label, _) in METRICS.items()}
        rows.append({"selection": sel, "pairs": s["n_train"]} | cells)
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"rep_{name}")
    st.caption(f"Mean ± sd over training seeds {report['seeds']}; {report['n_test']:,} test pairs.")
    for line in report["verdicts"]:
        st.markdown(f"- {line}")
    cols = st.columns(2)
    for col, metric in zip(cols, ("chrf", "loss"), strict=True):
        label, higher = METRICS[metric]
        per = [report["per_selection"][s][metric] for s in report["names"]]
        fig = go.Figure(
            go.Scatter(
                x=report["names"],
                y=[p["mean"] for p in per],
                error_y=dict(type="data", array=[p["sd"] or 0 for p in per]),
                mode="markers",
                marker=dict(size=12, color="#2563eb"),
            )
        )
        fig.update_layout(
            title=f"{label}, mean ± sd over seeds ({'higher' if higher else 'lower'} is better)",
            height=260,
            margin=dict(l=10, r=10, t=40, b=10),
        )
        col.plotly_chart(fig, key=f"rep_{name}_{metric}")
    a, b = st.columns(2)
    a.download_button("Report (Markdown)", markdown(report), file_name=f"{name}.md", key=f"rep_md_{name}")
    b.download_button("Report (JSON)", json.dumps(report, indent=2), file_name=f"{name}.json", key=f"rep_js_{name}")


def _cell(m: dict) -> str:
    return f"{m['mean']:.3f}" + (f" ± {m['sd']:.3f}" if m["sd"] is not None else "")
