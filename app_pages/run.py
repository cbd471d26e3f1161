"""New run: model, candidate and seed files, settings; the work runs in a background process that this page
follows through status.json (a reload or another tab re-attaches)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import streamlit as st

from app_pages.common import RUN_KEY, choose_run, guard, live, progress_label, run_dir, runs_dir
from gdig.config import DataConfig, ScoreConfig
from gdig.options import OptionSpec, specs
from gdig.rundir.job import read_job_settings
from gdig.studio.jobs import cancel_job, job_state, plan_new_run, process_choices, start_job, start_new_run

st.header("New run")
# The settings the form offers, in this order; defaults, help, labels and choices come from the dataclasses.
GRID = (
    "hessian",
    "damping_relative",
    "normalize",
    "seed_batch",
    "batch_size",
    "max_length",
    "fit_examples",
    "sketch_dim",
    "device",
    "checkpoint_seconds",
    "module_partitions",
    "memory_gb",
)
WIDE = ("modules", "adapter", "trg_lang", "adequacy", "shard_factors", "trust_remote_code")
FORM_SPECS = specs(ScoreConfig) | specs(DataConfig)
DEVICES = ("auto", "cpu", "cuda")
DOUBLE_CLICK_S = 3.0  # a second Start this soon after one is the rest of a double-click


def option_widget(where, spec: OptionSpec):
    """The widget of one setting, with its default, label and help; None-able numbers show None as 0."""
    key = f"new_{spec.name}"
    kwargs = {"help": spec.help, "key": key}
    if spec.kind is bool:
        return where.checkbox(spec.label, value=spec.default, **kwargs)
    if spec.choices or spec.name == "device":
        choices = spec.choices or DEVICES
        return where.selectbox(spec.label, choices, index=choices.index(spec.default), **kwargs)
    if spec.kind in (int, float):
        low = spec.kind(spec.minimum) if spec.minimum is not None else None
        value = spec.kind(spec.default if spec.default is not None else 0)
        fmt = "%.4f" if spec.kind is float and value < 1 else None
        got = where.number_input(spec.label, value=value, min_value=low, format=fmt, **kwargs)
        return (spec.kind(got) or None) if spec.optional else spec.kind(got)
    return where.text_input(spec.label, value=spec.default or "", **kwargs) or (None if spec.optional else "")


@st.cache_resource
def _process_choices() -> tuple[int, int, str]:
    return process_choices()


def _data_input(label: str, key: str, help_: str):
    source = st.radio(f"{label} from", ["path on this machine", "upload"], horizontal=True, key=f"{key}_src")
    if source == "upload":
        return st.file_uploader(label, type=["jsonl", "json", "csv", "tsv", "parquet"], key=f"{key}_up", help=help_)
    return st.text_input(f"{label} file", key=f"{key}_path", help=help_ + " Two text files: `src.txt,tgt.txt`.")


def _form(buttons: str = "") -> None:
    """The new-run form; `buttons` suffixes its buttons' keys: the form under a started run has other buttons, so
    the second click of a double-click on Start, addressed to the first form's button, starts nothing."""
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
        columns = st.columns(3)
        s = {}
        for i, setting in enumerate(GRID):
            s[setting] = option_widget(columns[i % 3], FORM_SPECS[setting])
        for setting in WIDE:
            s[setting] = option_widget(st, FORM_SPECS[setting])
    default, most, kind = _process_choices()
    processes = st.number_input(
        f"Processes ({kind})",
        min_value=1,
        max_value=most,
        value=default,
        key="new_processes",
        help="Work shared among this many processes launched by torchrun: one per GPU, or CPU processes of one "
        "thread each; the results are the same as with one (README: Many GPUs).",
    )
    files = [f if isinstance(f, str) or f is None else (f.name, f.getvalue()) for f in (cands, seeds)]
    if st.button(
        "Plan memory and time",
        key=f"plan{buttons}",
        help="Loads the model in a separate process and runs a few "
        "of the longest batches: the memory each stage needs and about how long it takes.",
    ):
        try:
            with st.spinner("Probing the model on the longest batches…"):
                st.code(plan_new_run(runs_dir(), name, model, files, s, processes=int(processes)), language=None)
        except ValueError as e:
            st.error(str(e))
    if st.button("Start", type="primary", key=f"start{buttons}"):
        _start(name, model, files, s, int(processes))


def _start(name: str, model: str, files: list, settings: dict, processes: int) -> None:
    """Start the run and follow it. A double-click's second click may reach a Start of its own (the first run
    interrupted at a Streamlit call, or the form redrawn with a fresh name): a Start within DOUBLE_CLICK_S of
    this session's last one follows that run instead of starting another. The session follows the new run
    before its job starts, so a rerun caused meanwhile finds it, not the form."""
    last = st.session_state.get("_started")  # (name, time) of this session's last start
    if last and time.time() - last[1] < DOUBLE_CLICK_S:
        choose_run(last[0])
        st.rerun()
    before = st.session_state.get(RUN_KEY)
    st.session_state["_started"] = (name.strip(), time.time())
    st.session_state[RUN_KEY] = name.strip()  # session state only: no Streamlit call, no interruption here
    started = False
    try:
        start_new_run(runs_dir(), name, model, files, settings, processes=processes)
        started = True
    except ValueError as e:
        st.error(str(e))
    finally:
        if not started:
            st.session_state[RUN_KEY] = before
            del st.session_state["_started"]
    if not started:
        return
    del st.session_state["new_name"]  # the next run gets a fresh default name
    choose_run(name.strip())
    st.rerun()


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
        settings = read_job_settings(Path(folder))
        if settings is not None:
            st.caption(
                "Resume keeps every complete chunk of scores and the curvature fit's saved partial sums "
                "(saved when you cancel, and every few seconds): it continues from there."
            )
            if st.button("Resume", key="resume"):
                start_job(ScoreConfig.from_dict(settings), resume=True)
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
            _form(buttons="_another")
    else:
        _form()
