"""New run: model, candidate and seed files, settings; the work runs in a background process that this page
follows through status.json (a reload or another tab re-attaches)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import streamlit as st

from app_pages.common import RUN_KEY, choose_run, guard, live, run_dir, runs_dir
from gdig.config import DEFAULT_MODULES, HESSIANS, NORMALIZATIONS, DataConfig, ScoreConfig
from gdig.jobs import SETTINGS_FILE, cancel_job, job_state, start_job, start_new_run
from gdig.status import format_seconds

st.header("New run")
DEFAULT = ScoreConfig(model="", candidates="", seeds="", out="")


def _data_input(label: str, key: str, help_: str):
    source = st.radio(f"{label} from", ["path on this machine", "upload"], horizontal=True, key=f"{key}_src")
    if source == "upload":
        return st.file_uploader(label, type=["jsonl", "json", "csv", "tsv", "parquet"], key=f"{key}_up", help=help_)
    return st.text_input(f"{label} file", key=f"{key}_path", help=help_ + " Two text files: `src.txt,tgt.txt`.")


def _form() -> None:
    if "new_name" not in st.session_state:  # a fresh default once per form, never on every rerun
        st.session_state["new_name"] = dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    name = st.text_input("Run name", key="new_name", help="A folder of this name is made under the runs folder.")
    model = st.text_input(
        "Model",
        placeholder="path/to/model or org/name",
        key="new_model",
        help="A local model folder (with config.json), or a hub id already in the local cache "
        "(nothing is downloaded). G-DIG scores with the model fine-tuned on the pool.",
    )
    c1, c2 = st.columns(2)
    with c1:
        cands = _data_input("Candidates", "cands", "The pool to select from.")
    with c2:
        seeds = _data_input("Seeds", "seeds", "A small trusted set of high-quality examples.")
    with st.expander("Settings", expanded=False):
        a, b, c = st.columns(3)
        s = {}
        s["hessian"] = a.selectbox(
            "Hessian",
            HESSIANS,
            index=HESSIANS.index(DEFAULT.hessian),
            help="EK-FAC (default), K-FAC, or identity (gradient dot products).",
        )
        s["damping_relative"] = b.number_input(
            "Relative damping",
            value=DEFAULT.damping_relative,
            min_value=1e-6,
            format="%.4f",
            help="lambda = this x mean eigenvalue, per module.",
        )
        s["normalize"] = c.selectbox(
            "Normalisation",
            NORMALIZATIONS,
            index=NORMALIZATIONS.index(DEFAULT.normalize),
            help="unit (default): cosine in the preconditioned metric; none: the paper's raw I(z,s); relatif: RelatIF.",
        )
        s["seed_batch"] = int(
            a.number_input("Seed batch", value=DEFAULT.seed_batch, min_value=1, help="Average seeds in groups of k.")
        )
        s["batch_size"] = int(b.number_input("Batch size", value=DEFAULT.batch_size, min_value=1))
        s["max_length"] = c.number_input("Max length (tokens)", value=DataConfig().max_length, min_value=8)
        s["fit_examples"] = int(a.number_input("Fit curvature on (0 = all)", value=0, min_value=0)) or None
        s["sketch_dim"] = int(b.number_input("Sketch dimension", value=DEFAULT.sketch_dim, min_value=16))
        s["device"] = c.selectbox("Device", ["auto", "cpu", "cuda"])
        s["checkpoint_seconds"] = float(
            a.number_input(
                "Save the fit's progress every (s)",
                min_value=1.0,
                value=DEFAULT.checkpoint_seconds,
                help="And whenever you cancel: Resume continues from there.",
            )
        )
        s["modules"] = st.text_input("Tracked modules (regex)", value=DEFAULT_MODULES)
        s["trg_lang"] = st.text_input("Default target language", value="", help="When a record has no trg_lang.")
        s["trust_remote_code"] = st.checkbox(
            "Trust remote code", value=False, help="Runs the model repository's own Python code."
        )
    if st.button("Start", type="primary", key="start"):
        files = [f if isinstance(f, str) or f is None else (f.name, f.getvalue()) for f in (cands, seeds)]
        try:
            start_new_run(runs_dir(), name, model, files, s)
        except ValueError as e:
            st.error(str(e))
            return
        choose_run(name.strip())
        del st.session_state["new_name"]  # the next run gets a fresh default name
        st.rerun()


def progress_label(state) -> str:
    """Stage counter, rate and the time left in the stage and in the whole job."""
    label = f"{state.stage}: {state.done:,}/{state.total:,}"
    if state.rate:
        label += f" · {state.rate:.1f}/s"
    if state.eta_seconds is not None:
        label += f" · stage {format_seconds(state.eta_seconds)} left"
    if state.job_eta_seconds is not None:
        label += f" · about {format_seconds(state.job_eta_seconds)} left overall"
    return label


def progress(folder: str) -> bool:
    """The run's state; returns whether its job is still running."""
    state = job_state(folder)
    st.subheader(f"Run `{Path(folder).name}`")
    if state.finished:
        st.success("Finished. Open the Influence page to inspect it.")
        st.page_link("app_pages/influence.py", label="Influence", icon=":material/bar_chart:")
        return False
    if state.error:
        st.error(f"The run stopped: {state.error}")
        settings = Path(folder) / SETTINGS_FILE
        if settings.exists():
            st.caption(
                "Resume keeps every complete chunk of scores and the curvature fit's saved partial sums "
                "(saved when you cancel, and every few seconds): it continues from there."
            )
            if st.button("Resume", key="resume"):
                start_job(ScoreConfig.from_dict(json.loads(settings.read_text())), resume=True)
                st.rerun(scope="app")
        return False
    st.progress(state.job_fraction, text=f"Overall {state.job_fraction:.0%} · " + progress_label(state))
    if state.running and st.button("Cancel", key="cancel"):
        cancel_job(folder, grace_seconds=5)
        st.rerun(scope="app")
    return state.running


with guard():
    current = st.session_state.get(RUN_KEY)
    busy = bool(current) and run_dir(current).is_dir() and not job_state(run_dir(current)).finished
    if busy:
        folder = str(run_dir(current))
        live(progress, f"run-{current}", job_state(folder).running, folder)
        st.divider()
        with st.expander("Start another run"):
            _form()
    else:
        _form()
